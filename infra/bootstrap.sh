#!/usr/bin/env bash
# Install everything nudgeflow needs on a fresh Debian/Ubuntu machine, idempotently:
#   - Debian packages: redis-server, and Java 17 + Maven if they are missing;
#   - a virtualenv at .venv with nudgeflow (editable) and its dev tools, pinned in setup.py,
#     made from $PYTHON, else the optimized CPython infra/build-python.sh built, else python3.11;
#   - promtool (the rules' tests run it) and prometheus (the stack's server) in .venv/bin, taken
#     out of Debian's prometheus package;
#   - the Java jars (Kafka, Cassandra, Flink Kafka connector + nudgeflow-flink) from Maven
#     Central into $NUDGEFLOW_HOME/jars (default ~/.nudgeflow/jars);
#   - the schema registry (Apicurio Registry's server archive, from Maven Central) beside them.
# Re-running it is cheap: everything already present is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[bootstrap] %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
# mypyc compiles the engine's hot modules with it (infra/native.py)
command -v gcc >/dev/null || missing+=(gcc)
# the optimized CPython infra/build-python.sh builds, when there is one (a faster engine)
built_python=${NUDGEFLOW_HOME:-$HOME/.nudgeflow}/python/bin/python3.11
if [ -z "${PYTHON:-}" ] && [ -x "$built_python" ]; then PYTHON=$built_python; fi
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then
  if command -v python3.11 >/dev/null; then PYTHON=python3.11; else missing+=(python3.11); fi
fi
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3.11-venv)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ "$PYTHON" = python3.11 ] || PYTHON=$(command -v "$PYTHON")

if [ ! -x .venv/bin/python ]; then
  say "creating the virtualenv .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.nudgeflow-installed
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  say "installing nudgeflow and its pinned dependencies into .venv (first run: a few minutes)"
  log=.venv/pip-install.log
  if ! { .venv/bin/python -m pip install --upgrade pip \
         && .venv/bin/python -m pip install -e ".[dev]"; } >"$log" 2>&1; then
    tail -n 30 "$log"
    say "pip install failed; the full output is in $log"
    exit 1
  fi
  touch "$stamp"
fi

# promtool and prometheus only: `apt-get download` fetches the .deb and dpkg-deb unpacks it in a
# temporary directory, so the package is not installed and no Prometheus service is set up or
# started (`nudgeflow stack up` runs the server, infra/servers/prometheus.py)
if [ ! -x .venv/bin/promtool ] || [ ! -x .venv/bin/prometheus ]; then
  say "extracting promtool and prometheus from Debian's prometheus package into .venv/bin"
  deb_dir=$(mktemp -d)
  if ! (cd "$deb_dir" && apt-get download prometheus >/dev/null 2>&1); then
    as_root apt-get update -qq
    (cd "$deb_dir" && apt-get download prometheus >/dev/null 2>&1)
  fi
  dpkg-deb -x "$deb_dir"/prometheus_*.deb "$deb_dir/root"
  install -m 0755 "$deb_dir/root/usr/bin/promtool" .venv/bin/promtool
  install -m 0755 "$deb_dir/root/usr/bin/prometheus" .venv/bin/prometheus
  rm -rf "$deb_dir"
fi

say "resolving jars (cached in ${NUDGEFLOW_HOME:-$HOME/.nudgeflow}/jars)"
.venv/bin/nudgeflow jars >/dev/null
say "compiling the engine's hot modules (mypyc; udfs/_native, rebuilt when a source changes)"
.venv/bin/nudgeflow native >/dev/null || say "the engine's modules run as Python (see above)"
# the schema registry of the Confluent wire format option (infra/servers/registry.py)
.venv/bin/python -m infra.servers.registry
say "ready: activate with 'source .venv/bin/activate', or call .venv/bin/nudgeflow"
