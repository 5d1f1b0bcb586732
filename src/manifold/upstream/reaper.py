"""The reaper: keeps one stdio upstream's process group from outliving Manifold.

Manifold does not start a stdio server directly. It starts this small program
(`python -I -S reaper.py WATCH_FD COMMAND [ARGS...]`) in a new session, and the
reaper starts the server in a process group of its own. The server inherits
stdin, stdout and stderr as they are, so every message goes straight between
Manifold and the server: the reaper costs one interpreter start at spawn time
and nothing per call.

Manifold holds the write end of a pipe whose read end is WATCH_FD. The pipe
closes when Manifold closes it (it is done with the server) or when Manifold
dies in any way, SIGKILL included. Either way the reaper then terminates the
server's whole process group (SIGTERM, a grace period, SIGKILL), so wrapper
chains (`sh -c`, `npx`, `uvx`) and their grandchildren go too, even those that
ignore stdin and SIGTERM. When the server exits on its own, the reaper clears
out what is left of its group the same way and exits with the server's status
(128 + N for a server killed by signal N).

Standard library only and no `site` (`-I -S`): it must start fast and must not
depend on the environment of the server it runs. The same code runs on its own
(`python reaper.py`) and is imported by Manifold only for `command_line()`.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

GRACE = 2.0
"""Seconds between SIGTERM and SIGKILL for the server's process group."""

POLL = 0.01

EXIT_SPAWN_FAILED = 127
"""The reaper's status when the command could not be started (as a shell reports it)."""

_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _Stop(Exception):
    """The reaper itself was asked to stop: take the group down with it."""


def command_line(python: str, watch_fd: int, command: str, args: list[str]) -> list[str]:
    """The argv that runs `command args` under a reaper watching `watch_fd`."""
    return [python, "-I", "-S", os.path.abspath(__file__), str(watch_fd), command, *args]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a member changed its uid; it still exists
        return True
    return True


def _become_subreaper() -> None:
    """Adopt orphaned descendants (Linux), so they are reaped here and never linger as zombies.

    Without it a wrapper's orphaned grandchild is re-parented to PID 1, which in
    a container may never reap it, and a zombie keeps its process group alive.
    """
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def _reap_all(pid: int, status: list[int]) -> None:
    """Collect every exited child without blocking; keep the server's exit status."""
    while True:
        try:
            waited, raw = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            if not status:  # pragma: no cover - nobody else reaps our children
                status.append(EXIT_SPAWN_FAILED)
            return
        if waited == 0:
            return
        if waited == pid:
            status.append(os.waitstatus_to_exitcode(raw))


def _take_down(pgid: int, pid: int, status: list[int]) -> None:
    """SIGTERM the group, wait up to GRACE for it to empty, then SIGKILL what is left."""
    _reap_all(pid, status)
    for signum, wait in ((signal.SIGTERM, GRACE), (signal.SIGKILL, GRACE)):
        try:
            os.killpg(pgid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap_all(pid, status)
            if not _group_alive(pgid):
                return
            time.sleep(POLL)


def _stop(signum: int, frame: object) -> None:
    raise _Stop


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        sys.stderr.write("usage: reaper.py WATCH_FD COMMAND [ARGS...]\n")
        return 2
    watch = int(argv[0])
    os.set_inheritable(watch, False)
    command = argv[1:]
    for signum in _FORWARDED:
        signal.signal(signum, _stop)
    # A stop request may not land between the spawn and knowing the pid.
    signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
    try:
        # A group of its own (pgid = pid), every signal at its default and
        # unblocked, no descriptor of ours beyond stdin, stdout and stderr.
        pid = os.posix_spawnp(
            command[0],
            command,
            os.environ,
            setpgroup=0,
            setsigmask=(),
            setsigdef=(*_FORWARDED, signal.SIGPIPE, signal.SIGXFSZ),
        )
    except OSError as exc:
        sys.stderr.write(f"manifold: cannot start {command[0]!r}: {exc.strerror or exc}\n")
        return EXIT_SPAWN_FAILED
    status: list[int] = []
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)  # a pending stop lands here
        # After the spawn, so the ctypes import is not on the server's start-up path; a
        # descendant orphaned in the few milliseconds before goes to PID 1 as it would anyway.
        _become_subreaper()
        # Keep no end of the server's pipes: its stdout must reach EOF when it exits.
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.close(null)
        pidfd = None
        if hasattr(os, "pidfd_open"):
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:  # pragma: no cover - kernels before 5.3
                pidfd = None
        watched = [watch] if pidfd is None else [watch, pidfd]
        while not status:
            # With a pidfd the server's exit wakes us at once; the timeout only
            # reaps adopted orphans now and then (or polls, without a pidfd).
            ready, _, _ = select.select(watched, [], [], 1.0 if pidfd is not None else 0.05)
            if watch in ready and not os.read(watch, 4096):
                break  # Manifold closed the pipe, or died
            _reap_all(pid, status)
    except _Stop:
        pass
    for signum in _FORWARDED:  # finish the job even if asked twice
        signal.signal(signum, signal.SIG_IGN)
    _take_down(pid, pid, status)
    code = status[0] if status else EXIT_SPAWN_FAILED
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
