"""The synthetic workspace every benchmark uses: S scenarios x 10 cohorts.

Deterministic (seeded by target index) so the exporter, the naive exporter and
the state file all describe the very same series and values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
# The tree whose ``exporter`` package the benchmarks run, in process and as child
# processes: this repository, or another checkout named by $EXPORTER_ROOT, to
# measure a change side by side without touching this one.
EXPORTER_ROOT = Path(os.environ.get("EXPORTER_ROOT") or ROOT).resolve()
if str(EXPORTER_ROOT) not in sys.path:
    sys.path.insert(0, str(EXPORTER_ROOT))

from exporter.client import RANKS, Summary  # noqa: E402
from exporter.config import Config, parse_config  # noqa: E402
from exporter.state import encode  # noqa: E402
from exporter.store import Store  # noqa: E402

COHORTS_PER_SCENARIO = 10
API_KEY = "bench_" + "k" * 16  # not a secret: the fake API accepts it on loopback only


def shape(targets: int) -> tuple[int, int]:
    """(scenarios, cohorts) for a target count: 10 cohorts each (2,000 = 200 x 10)."""
    cohorts = min(COHORTS_PER_SCENARIO, targets)
    return max(targets // cohorts, 1), cohorts


def scenario_slug(i: int) -> str:
    return f"scenario-{i:04d}-discovery-call"


def cohort_name(j: int) -> str:
    return "all" if j == 0 else f"team-{j:02d}"


def config_dict(targets: int, base_url: str, refresh_interval: str = "15m") -> dict[str, Any]:
    """A configuration with ``targets`` targets against ``base_url``."""
    scenarios, cohorts = shape(targets)
    return {
        "api": {"base_url": base_url},
        "refresh_interval": refresh_interval,
        "max_targets": max(targets, 500),
        "scenarios": [{"id": scenario_slug(i), "name": f"Discovery call {i}"}
                      for i in range(scenarios)],
        "cohorts": [{"name": cohort_name(j)} for j in range(cohorts)],
    }


def config_yaml(targets: int, base_url: str, refresh_interval: str = "15m") -> str:
    # JSON is YAML: no need for a YAML writer here.
    return json.dumps(config_dict(targets, base_url, refresh_interval), indent=1)


def summary_for(index: int) -> Summary:
    """Plausible, varied values for target number ``index``."""
    r = (index * 2654435761) % 4294967296  # Knuth's multiplicative hash: cheap, deterministic
    participants = 5 + r % 200
    counts = {"gold": r % 17, "silver": (r >> 5) % 23, "bronze": (r >> 9) % 19,
              "unranked": (r >> 13) % 7}
    score = round(40 + (r % 600) / 10, 1)
    return Summary(
        participants=participants,
        sessions=participants * (1 + (r >> 3) % 9),
        average_best_score=score,
        average_best_rank=RANKS[(r >> 7) % 4],
        average_score_lift=round(((r >> 11) % 300) / 10, 1),
        practice_seconds=float(60 * (100 + (r >> 4) % 5000)),
        average_session_duration_seconds=float(120 + (r >> 6) % 600),
        rank_participants=counts,
    )


def targets_of(config: Config) -> list[Any]:
    """The configuration's explicit targets, in the tree under test or an older one."""
    try:
        from exporter.targets import build_targets
    except ImportError:  # a tree from before exporter.targets, named by $EXPORTER_ROOT
        return config.targets()  # type: ignore[attr-defined,no-any-return]
    return build_targets(config)


def build_store(targets: int, now: float, base_url: str = "http://127.0.0.1:9/v1") -> Store:
    """A store holding fresh data for every target, as after a full fill."""
    config = parse_config(config_dict(targets, base_url))
    store = Store()
    store.set_targets(targets_of(config))
    for i, target in enumerate(targets_of(config)):
        store.record_success(target.key, summary_for(i), now - (i % 600))
    store.record_schedule(900.0 if targets * 86400 / 900 <= 900 else targets * 86400 / 900, {})
    return store


def parsed_config(targets: int, base_url: str) -> Config:
    return parse_config(config_dict(targets, base_url))


def state_file_bytes(targets: int, now: float, base_url: str) -> bytes:
    """A --state.file in which every target was refreshed within the last 10 minutes."""
    store = build_store(targets, now, base_url)
    return encode(store.snapshot(), now)


# --- processes -------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def exporter_command(config: Path, port: int, state: Path | None) -> list[str]:
    cmd = [sys.executable, "-m", "exporter", f"--config.file={config}",
           f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    if state is not None:
        cmd.append(f"--state.file={state}")
    return cmd


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["EXEC_API_KEY"] = API_KEY
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(EXPORTER_ROOT), env.get("PYTHONPATH")) if p)
    env.pop("PYTHONDEVMODE", None)
    return env


def start(cmd: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in the exporter tree (``python -m`` looks there first), output to ``log``."""
    handle = log.open("wb")
    try:
        return subprocess.Popen(list(cmd), cwd=EXPORTER_ROOT, env=child_env(), stdout=handle,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        handle.close()


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; never raises."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_until(check: Any, timeout: float, interval: float = 0.02) -> float | None:
    """Poll ``check()`` until truthy; the seconds it took, or None on timeout."""
    start_at = time.monotonic()
    deadline = start_at + timeout
    while time.monotonic() < deadline:
        if check():
            return time.monotonic() - start_at
        time.sleep(interval)
    return None


# --- /proc ---------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    """A plain, aligned text table (markdown-compatible)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    out = [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def chunks(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i:i + size]
