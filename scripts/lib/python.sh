# Sourced by scripts/demo.sh and scripts/test.sh: choose a Python >= 3.11 and make
# sure .venv was built by that very version (a .venv left by another Python, say
# Ubuntu 22.04's 3.10, is removed and built again, never reused).
#
# After `use_python`, $PYTHON is the interpreter and .venv exists with it.

MIN_PYTHON=3.11

# The version an interpreter reports (3.12.4), or nothing if it does not run.
python_version() {
  "$1" -c 'import sys; print(*sys.version_info[:3], sep=".")' 2>/dev/null || true
}

# Whether version $1 (3.12.4) is at least $MIN_PYTHON.
new_enough() {
  local major minor want_major want_minor
  IFS=. read -r major minor _ <<<"$1"
  IFS=. read -r want_major want_minor <<<"$MIN_PYTHON"
  [[ "$major" =~ ^[0-9]+$ && "$minor" =~ ^[0-9]+$ ]] || return 1
  (( major > want_major || (major == want_major && minor >= want_minor) ))
}

# Sets PYTHON to the first of python3.13, python3.12, python3.11, python3 that is
# >= 3.11; otherwise says what was found and what is needed, and exits 1.
find_python() {
  local candidate path version seen=()
  for candidate in python3.13 python3.12 python3.11 python3; do
    path=$(command -v "$candidate" 2>/dev/null) || continue
    version=$(python_version "$path")
    if new_enough "$version"; then
      PYTHON=$path
      PYTHON_VERSION=$version
      return 0
    fi
    seen+=("$candidate is ${version:-not runnable}")
  done
  {
    echo "error: exec-exporter needs Python $MIN_PYTHON or newer (with its venv module)."
    if [ ${#seen[@]} -gt 0 ]; then
      echo "  found: $(IFS=,; echo "${seen[*]}" | sed 's/,/, /g')"
    else
      echo "  found: no python3 on PATH"
    fi
    echo "  looked for: python3.13, python3.12, python3.11, python3 (in that order)"
    echo "  Debian 12, Ubuntu 24.04: sudo apt-get install python3 python3-venv"
    echo "  Ubuntu 22.04: sudo apt-get install python3.11 python3.11-venv"
    echo "  (or any Python >= $MIN_PYTHON from pyenv/uv: put it on PATH as python3.1x)"
  } >&2
  exit 1
}

# Installs the venv module when the chosen Python lacks it (Debian splits it out).
ensure_venv_module() {
  "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null && return 0
  local package=python3-venv sudo=
  case "$(basename "$PYTHON")" in python3.1[0-9]*) package="$(basename "$PYTHON")-venv" ;; esac
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "== installing $package (the venv module for $PYTHON; needs root or sudo)" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$package" >/dev/null
}

# Chooses the interpreter, then makes .venv with it, rebuilding one made by another
# Python (or broken: its python does not run).
use_python() {
  find_python
  ensure_venv_module
  if [ -e .venv ]; then
    local built
    built=$(python_version .venv/bin/python)
    if [ "${built%.*}" != "${PYTHON_VERSION%.*}" ]; then
      echo "== .venv was built by Python ${built:-(broken)}; rebuilding it with" \
           "$PYTHON ($PYTHON_VERSION)" >&2
      rm -rf .venv
    fi
  fi
  if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv with $PYTHON ($PYTHON_VERSION)" >&2
    "$PYTHON" -m venv .venv
  fi
}
