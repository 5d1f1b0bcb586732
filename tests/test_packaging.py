"""The built wheel installs and runs: what `pipx install` and `uvx` do with it."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_installs_and_reports_its_version(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        timeout=120,
    )
    wheel = next(tmp_path.glob("mcp_manifold-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "manifold = manifold.early:main" in archive.read(entry_points).decode()
    assert "manifold/demo/server.py" in names  # the example config's upstream ships inside
    assert "manifold/migrations/versions/0001_servers_and_tools.py" in names  # read from disk at run time
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True, timeout=120)
    # The installed copy, with this venv's dependencies beside it (not the source tree).
    env = {"PYTHONPATH": f"{target}:{sysconfig.get_paths()['purelib']}", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-I", "-c", "import sys; sys.path[:0] = sys.argv[1].split(':'); import manifold.cli as c; print(c.__file__); c.main(['--version'])", env["PYTHONPATH"]],
        capture_output=True, text=True, timeout=60,
    )
    assert out.stdout.splitlines()[0].startswith(str(target))
    assert "manifold, version" in out.stdout
    # The installed copy finds its own migrations and builds a store with them.
    db = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    out = subprocess.run(
        [sys.executable, "-I", "-c", "import sys; sys.path[:0] = sys.argv[1].split(':'); import manifold.cli as c; c.main(['db', 'upgrade', '--db', sys.argv[2]])", env["PYTHONPATH"], db],
        capture_output=True, text=True, timeout=60,
    )
    assert out.stdout.startswith(f"{db}: upgraded from revision (empty) to "), out.stderr
