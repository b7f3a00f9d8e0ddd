#!/usr/bin/env bash
# From a fresh clone: install, start the local stack, generate live traffic and run the job on
# the stack's Flink cluster with a live summary. Ctrl-C stops the job and the traffic; the
# servers keep running until `.venv/bin/nudgeflow stack down`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash infra/bootstrap.sh
nf=.venv/bin/nudgeflow

$nf stack up
echo "[quickstart] generating traffic: 2,000 users, 500 events/s for 10 minutes (log: generate.log)"
$nf generate --users 2000 --events 300000 --rate 500 --duration 600 --quiet \
  > "${NUDGEFLOW_HOME:-$HOME/.nudgeflow}/generate.log" 2>&1 &
generator=$!

stop() {
  echo
  echo "[quickstart] stopping the job and the traffic"
  kill "$generator" 2>/dev/null || true
  $nf jobs cancel --all || true
  echo "[quickstart] the servers are still up: '$nf stack status', stop them with '$nf stack down'"
}
trap stop EXIT
trap 'exit 130' INT TERM
echo "[quickstart] submitting the job; Ctrl-C stops it"
$nf run
