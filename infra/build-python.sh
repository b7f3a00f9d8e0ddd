#!/usr/bin/env bash
# Build the CPython the image builds (infra/docker/Dockerfile: its PYTHON_VERSION and flags),
# for a faster local engine: shared (the TaskManagers embed it in their JVM), profile-guided and
# link-time optimized. The engine's thread spends ~60% of its CPU in libpython; in a same-run
# comparison such a build drained the bench's backlog 19% faster than pyenv's plain shared one
# (docs/performance.md, "Tuning guide"). About 12-15 minutes on two cores.
#
#   bash infra/build-python.sh          # into $NUDGEFLOW_HOME/python (~/.nudgeflow/python)
#   rm -rf .venv && bash infra/bootstrap.sh   # a virtualenv made from it (bootstrap prefers it)
#
# PREFIX (first argument): where to install. PYTHON_SOURCE: the source tarball's URL or path
# (default: python.org's Python-$PYTHON_VERSION.tgz). Where python.org is out of reach, Debian's
# archive holds the same upstream tarball, e.g.
#   PYTHON_SOURCE=http://deb.debian.org/debian/pool/main/p/python3.11/python3.11_3.11.2.orig.tar.gz
# Re-running it with an optimized build already at PREFIX does nothing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
say() { printf '[build-python] %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

PYTHON_VERSION=${PYTHON_VERSION:-$(sed -n 's/^ARG PYTHON_VERSION=//p' "$root/infra/docker/Dockerfile")}
PREFIX=${1:-${NUDGEFLOW_HOME:-$HOME/.nudgeflow}/python}
PYTHON_SOURCE=${PYTHON_SOURCE:-https://www.python.org/ftp/python/$PYTHON_VERSION/Python-$PYTHON_VERSION.tgz}
# the flags are the image's: keep the two alike (tests/unit/test_build_python.py)
CONFIGURE_FLAGS=(--enable-shared --enable-optimizations --with-lto)

if "$PREFIX/bin/python3.11" -c 'import sysconfig, sys
args = sysconfig.get_config_var("CONFIG_ARGS")
sys.exit(not all(f in args for f in sys.argv[1:]))' "${CONFIGURE_FLAGS[@]}" 2>/dev/null; then
  say "an optimized CPython is already at $PREFIX: $("$PREFIX/bin/python3.11" --version)"
  exit 0
fi

missing=()
for package in build-essential libssl-dev zlib1g-dev libbz2-dev libffi-dev liblzma-dev \
    libsqlite3-dev; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
say "sources: $PYTHON_SOURCE"
if [ -f "$PYTHON_SOURCE" ]; then
  cp "$PYTHON_SOURCE" "$work/python.tgz"
else
  curl -fsSL -o "$work/python.tgz" "$PYTHON_SOURCE" || {
    say "could not download $PYTHON_SOURCE: set PYTHON_SOURCE to a reachable copy (see above)"
    exit 1
  }
fi
mkdir "$work/src"
tar -xzf "$work/python.tgz" -C "$work/src" --strip-components 1
cd "$work/src"
say "building into $PREFIX (configure, a profile run of the test suite, an optimized build; the log: $work/build.log while it runs)"
if ! { ./configure --prefix="$PREFIX" "${CONFIGURE_FLAGS[@]}" LDFLAGS="-Wl,-rpath,$PREFIX/lib" \
       && make -j"$(nproc)" && make install; } >"$work/build.log" 2>&1; then
  cp "$work/build.log" "$root/build-python.log"
  say "the build failed: the end of its log is below, all of it in $root/build-python.log"
  tail -20 "$root/build-python.log"
  exit 1
fi
say "ready: $("$PREFIX/bin/python3.11" --version) at $PREFIX/bin/python3.11"
say "next, in a checkout: rm -rf .venv && PYTHON=$PREFIX/bin/python3.11 bash infra/bootstrap.sh"
say "(bootstrap.sh takes ${NUDGEFLOW_HOME:-$HOME/.nudgeflow}/python by itself when PYTHON is unset)"
