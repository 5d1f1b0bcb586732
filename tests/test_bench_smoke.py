"""Smoke test of the benchmark: `bench/bench.py --quick` runs, prints its table and exits 0.

Only that the script works: no figure is checked and nothing here is timed (speed is measured by
`make bench`, never asserted in a test). The run is bounded; past the bound the benchmark's whole
process group gets SIGINT (it then stops what it started) and, if still there, SIGKILL.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "bench.py"
BOUND = 60.0  # seconds; `--quick` takes about 35-45 s on a 2-core machine
GRACE = 15.0

HEADINGS = (
    "Manifold benchmark",
    "1. Per-call latency",
    "2. Throughput",
    "3. Catalogue",
    "4. Start-up",
    "5. Peak RSS",
    "6. Targets",
)


def run_bounded(cmd: list[str]) -> tuple[int, str, str]:
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=BOUND)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)  # the group is the benchmark and what it started
        try:
            out, err = proc.communicate(timeout=GRACE)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        pytest.fail(
            f"{cmd[1]} ran past {BOUND:g} s\n--- stdout ---\n{out}\n--- stderr ---\n{err[-4000:]}"
        )
    return proc.returncode, out, err


@pytest.mark.slow
@pytest.mark.timeout(BOUND + GRACE + 30)
def test_bench_quick_prints_the_table() -> None:
    code, out, err = run_bounded([sys.executable, str(BENCH), "--quick"])
    assert code == 0, f"exit {code}\n--- stdout ---\n{out}\n--- stderr ---\n{err[-4000:]}"
    for heading in HEADINGS:
        assert heading in out, f"missing {heading!r} in:\n{out}"
    assert "stdio→stdio" in out
    assert "PASS" in out or "MISS" in out
    assert "ERROR" not in out, out


@pytest.mark.timeout(BOUND + GRACE + 30)
def test_http_client_bench_runs() -> None:
    """bench/http_clients.py: the figures behind the lean path's own HTTP client."""
    code, out, err = run_bounded([sys.executable, str(ROOT / "bench" / "http_clients.py"), "--requests", "50"])
    assert code == 0, f"exit {code}\n--- stdout ---\n{out}\n--- stderr ---\n{err[-4000:]}"
    assert "manifold http1" in out and "httpx" in out, out
