#!/usr/bin/env bash
# Set up a virtual environment and run the built-in demo: a simulated Exec API
# inside the process, no account, key or file needed. Then open http://localhost:10025/
# Needs Python >= 3.11 (python3.13, python3.12, python3.11 or python3, first found).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/python.sh
. scripts/lib/python.sh
use_python
# Reinstall only when the package's sources changed since the last install, so a
# second start takes no time: the stamp holds a hash of what `pip install .` reads.
stamp=.venv/.exec-exporter-demo.stamp
shopt -s globstar  # exporter/**/*.py: the subpackages too
sources=$(sha256sum pyproject.toml exporter/**/*.py | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/exec-exporter ] || [ "$(cat "$stamp" 2>/dev/null)" != "$sources" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet .
  echo "$sources" > "$stamp"
fi
exec .venv/bin/exec-exporter demo "$@"
