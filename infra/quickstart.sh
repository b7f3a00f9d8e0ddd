#!/usr/bin/env bash
# From a fresh clone: install, start the local stack, generate live traffic and run the job on
# the stack's Flink cluster with a live summary. Ctrl-C stops the job and the traffic; the
# servers keep running until `.venv/bin/nudgeflow stack down`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash infra/bootstrap.sh
nf=.venv/bin/nudgeflow

$nf stack up
# Each run reads only its own traffic: a fresh consumer group from the latest offsets, and the
# generator starts once the job is up. (Mixed with an earlier run's leftover clicks, whose event
# times differ, the new events would look late and be dead-lettered.)
run_id=$(date +%s)
echo "[quickstart] in 25 s: 2,000 users, 500 events/s for 10 minutes (log: generate.log)"
(sleep 25 && exec $nf generate --users 2000 --events 300000 --rate 500 --duration 600 \
  --quiet > "${NUDGEFLOW_HOME:-$HOME/.nudgeflow}/generate.log" 2>&1) &
generator=$!

stop() {
  echo
  echo "[quickstart] stopping the job and the traffic"
  pkill -P "$generator" 2>/dev/null || true
  kill "$generator" 2>/dev/null || true
  $nf jobs cancel --all || true
  echo "[quickstart] the servers are still up: '$nf stack status', stop them with '$nf stack down'"
}
trap stop EXIT
trap 'exit 130' INT TERM
echo "[quickstart] submitting the job; Ctrl-C stops it"
$nf run --consumer-group "quickstart-$run_id" --starting-offsets latest
