"""The wheel users install (pip, pipx, the container image) holds every module.

An editable install (the tests' own) finds subpackages on disk whatever the packaging
says, so this builds the real wheel from what the Dockerfile copies (pyproject.toml,
README.md, exporter/), in a clean folder (a build/ or egg-info left in the checkout
would hide a module the packaging leaves out), and reads its file list.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_ships_every_module_of_the_package(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "exporter", source / "exporter",
                    ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
         "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    wheel = next((tmp_path / "dist").glob("exec_exporter-*.whl"))
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if name.endswith(".py")}
    on_disk = {path.relative_to(ROOT).as_posix()
               for path in (ROOT / "exporter").rglob("*.py")}
    assert on_disk - shipped == set()
    assert {"exporter/sim/demo.py", "exporter/backfill/run.py"} <= shipped
