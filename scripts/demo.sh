#!/usr/bin/env bash
# Set up a virtual environment and run the built-in demo: a simulated Exec API
# inside the process, no account, key or file needed. Then open http://localhost:10025/
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  echo "installing python3-venv (needs root or sudo)" >&2
  $( [ "$(id -u)" = 0 ] || echo sudo ) apt-get update -qq
  $( [ "$(id -u)" = 0 ] || echo sudo ) apt-get install -y -qq python3-venv
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
# Reinstall only when the package's sources changed since the last install, so a
# second start takes no time: the stamp holds a hash of what `pip install .` reads.
stamp=.venv/.exec-exporter-demo.stamp
sources=$(sha256sum pyproject.toml exporter/*.py | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/exec-exporter ] || [ "$(cat "$stamp" 2>/dev/null)" != "$sources" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet .
  echo "$sources" > "$stamp"
fi
exec .venv/bin/exec-exporter demo "$@"
