#!/usr/bin/env bash
# Set up everything the tests need and run them all: lint, type checks, unit,
# integration and end-to-end tests against a real Prometheus.
# Needs Python >= 3.11 (python3.13, python3.12, python3.11 or python3, first found).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/python.sh
. scripts/lib/python.sh
find_python  # before anything is installed: without Python >= 3.11 nothing else matters
SUDO=$( [ "$(id -u)" = 0 ] || echo sudo )
need_apt=()
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== apt-get install ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
use_python  # Python >= 3.11; a .venv built by another version is rebuilt
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev]"
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff"; ruff check .
echo "== mypy"; mypy
# The cached exposition must stay byte-identical to prometheus_client's on the
# lowest version pyproject.toml allows, too: its own small venv (inside .venv/).
pc_min=$(python - <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(next(re.search(r">=([\w.]+)", d).group(1) for d in deps if d.startswith("prometheus-client")))
PY
)
echo "== byte-identity tests on prometheus-client $pc_min"
[ -x .venv/pc-min/bin/python ] || "$PYTHON" -m venv .venv/pc-min
.venv/pc-min/bin/python -m pip install --quiet -e ".[test]" "prometheus-client==$pc_min"
.venv/pc-min/bin/python -m pytest -q -p no:cacheprovider tests/test_exposition.py tests/test_collector.py
echo "== pytest"; python -m pytest "$@"
