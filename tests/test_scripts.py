"""scripts/demo.sh and scripts/test.sh choose a Python >= 3.11 and never reuse a .venv
built by another version, run as a user runs them (bash, a real process).

The interpreters are fakes on a PATH of their own (a ``python3`` that reports 3.10,
say): the scripts' choices are what is tested, not pip's downloads. Each fake logs
what it is asked to do; a fake ``-m venv DIR`` makes a fake venv whose python reports
the same version, with stub ``exec-exporter``, ``ruff``, ``mypy`` and ``pytest``.
The scripts run from a copy of the repository's scripts, so this checkout's own .venv
is never touched.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from harness import ROOT

# A fake interpreter: bash, reporting FAKE_VERSION, logging its arguments to $FAKE_LOG.
FAKE_PYTHON = r"""#!/bin/bash
echo "$(basename "$0") $FAKE_VERSION $*" >> "$FAKE_LOG"
case "$1" in
  -c)
    case "$2" in *version_info*) echo "$FAKE_VERSION" ;; esac
    exit 0 ;;
  -)  # test.sh reads pyproject.toml's lowest prometheus-client
    cat >/dev/null; echo "0.20.0"; exit 0 ;;
  -m)
    if [ "$2" = venv ]; then
      dir="${@: -1}"
      mkdir -p "$dir/bin"
      sed "s/^FAKE_VERSION_DEFAULT=.*/FAKE_VERSION_DEFAULT=$FAKE_VERSION/" "$0" > "$dir/bin/python"
      chmod +x "$dir/bin/python"
      for tool in exec-exporter ruff mypy pytest; do
        printf '#!/bin/bash\necho "%s $*" >> "$FAKE_LOG"\n' "$tool" > "$dir/bin/$tool"
        chmod +x "$dir/bin/$tool"
      done
    fi
    exit 0 ;;
esac
exit 0
"""


def fake_python(path: Path, version: str) -> None:
    """Write an interpreter at ``path`` that reports ``version`` whatever the environment
    says (a venv's python keeps the version it was made with)."""
    text = FAKE_PYTHON.replace('#!/bin/bash\n', '#!/bin/bash\nFAKE_VERSION_DEFAULT=x\n'
                               'FAKE_VERSION="$FAKE_VERSION_DEFAULT"\n', 1)
    text = text.replace("FAKE_VERSION_DEFAULT=x", f"FAKE_VERSION_DEFAULT={version}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


# The few real tools the scripts use besides Python; nothing else is on PATH.
TOOLS = ["bash", "env", "dirname", "basename", "cat", "rm", "mkdir", "sed", "sha256sum",
         "cut", "id", "chmod", "printf"]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of what the scripts read, with a bin directory holding only TOOLS."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "scripts", copy / "scripts")
    shutil.copy(ROOT / "pyproject.toml", copy)
    (copy / "exporter").mkdir()
    (copy / "exporter" / "__init__.py").write_text("")
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, tool
        (tools / tool).symlink_to(found)
    # test.sh installs these with apt when missing: present as stubs, nothing installs.
    for tool in ("promtool", "prometheus", "openssl"):
        (tools / tool).write_text("#!/bin/bash\nexit 0\n")
        (tools / tool).chmod(0o755)
    return copy


def run(repo: Path, script: str,
        pythons: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run scripts/SCRIPT with only the fake ``pythons`` (name -> version) on PATH."""
    fakes = repo.parent / "pythons"
    shutil.rmtree(fakes, ignore_errors=True)
    for name, version in pythons.items():
        fake_python(fakes / name, version)
    log = repo.parent / "calls.log"
    log.write_text("")
    env = {"PATH": f"{fakes}:{repo.parent / 'tools'}", "FAKE_LOG": str(log),
           "HOME": str(repo.parent)}
    result = subprocess.run(["bash", str(repo / "scripts" / script)], cwd=repo.parent,
                            env=env, capture_output=True, text=True, timeout=60)
    return result, log.read_text()


@pytest.mark.parametrize("script", ["demo.sh", "test.sh"])
def test_only_python_3_10_says_what_is_needed_and_builds_nothing(repo: Path,
                                                                 script: str) -> None:
    result, calls = run(repo, script, {"python3": "3.10.12"})
    assert result.returncode == 1
    assert result.stderr.startswith(
        "error: exec-exporter needs Python 3.11 or newer (with its venv module).\n"
        "  found: python3 is 3.10.12\n"
        "  looked for: python3.13, python3.12, python3.11, python3 (in that order)\n")
    assert "apt-get install python3.11 python3.11-venv" in result.stderr
    assert not (repo / ".venv").exists()
    assert " -m " not in calls  # no venv, no pip


def test_no_python_at_all(repo: Path) -> None:
    result, _ = run(repo, "demo.sh", {})
    assert result.returncode == 1
    assert "  found: no python3 on PATH\n" in result.stderr


@pytest.mark.parametrize("script", ["demo.sh", "test.sh"])
def test_the_newest_suitable_python_is_chosen(repo: Path, script: str) -> None:
    result, calls = run(repo, script, {"python3": "3.10.12", "python3.11": "3.11.9",
                                       "python3.12": "3.12.3"})
    assert result.returncode == 0, result.stderr
    assert "python3.12 3.12.3 -m venv .venv" in calls
    assert "python3.11 3.11.9 -m venv" not in calls and "python3 3.10.12 -m" not in calls
    assert (repo / ".venv" / "bin" / "python").exists()
    if script == "demo.sh":
        assert calls.strip().endswith("exec-exporter demo")
    else:
        assert "pytest" in calls.splitlines()[-1]


@pytest.mark.parametrize("script", ["demo.sh", "test.sh"])
def test_a_venv_built_by_another_python_is_rebuilt(repo: Path, script: str) -> None:
    # The state a failed run on Ubuntu 22.04 leaves: a .venv made by python3 3.10.
    fake_python(repo / ".venv" / "bin" / "python", "3.10.12")
    (repo / ".venv" / "bin" / "exec-exporter").write_text("#!/bin/bash\nexit 3\n")
    (repo / ".venv" / "bin" / "exec-exporter").chmod(0o755)
    result, calls = run(repo, script, {"python3": "3.10.12", "python3.11": "3.11.9"})
    assert result.returncode == 0, result.stderr
    assert "== .venv was built by Python 3.10.12; rebuilding it with" in result.stderr
    assert "python3.11 3.11.9 -m venv .venv" in calls
    # The new venv's python is 3.11 and everything after ran with it.
    reported = subprocess.run([str(repo / ".venv" / "bin" / "python"), "-c",
                               "import sys; print(sys.version_info)"],
                              capture_output=True, text=True,
                              env={**os.environ, "FAKE_LOG": os.devnull})
    assert reported.stdout.strip() == "3.11.9"
    assert " 3.10.12 -m pip" not in calls


def test_a_venv_of_the_same_version_is_kept(repo: Path) -> None:
    run(repo, "demo.sh", {"python3": "3.11.4"})
    marker = repo / ".venv" / "kept"
    marker.write_text("")
    result, calls = run(repo, "demo.sh", {"python3": "3.11.4"})
    assert result.returncode == 0, result.stderr
    assert marker.exists() and "-m venv" not in calls
    assert "rebuilding" not in result.stderr


def test_the_demo_reinstalls_when_a_subpackage_changes(repo: Path) -> None:
    """The install stamp covers every module, subpackages included: a change under
    exporter/sim/ must reinstall (a stamp of exporter/*.py alone ran stale code)."""
    (repo / "exporter" / "sim").mkdir()
    module = repo / "exporter" / "sim" / "world.py"
    module.write_text("A = 1\n")
    run(repo, "demo.sh", {"python3": "3.11.4"})
    result, calls = run(repo, "demo.sh", {"python3": "3.11.4"})
    assert result.returncode == 0, result.stderr
    assert "pip install --quiet ." not in calls  # nothing changed: no reinstall
    module.write_text("A = 2\n")
    result, calls = run(repo, "demo.sh", {"python3": "3.11.4"})
    assert result.returncode == 0, result.stderr
    assert "pip install --quiet ." in calls
