"""Signed session ids (faces/sessions.py): what one replica mints, another reads; nothing else passes."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import pytest
import yaml
from services import free_port, nginx_missing, nginx_path

from manifold.faces.sessions import MAX_ID_LENGTH, SessionTokens, negotiate

PARAMS = {
    "protocolVersion": "2025-06-18",
    "capabilities": {"sampling": {}, "elicitation": {}, "roots": {"listChanged": True}},
    "clientInfo": {"name": "claude-code", "version": "2.1.0"},
}
ROOT = Path(__file__).resolve().parent.parent


def test_an_id_minted_by_one_replica_is_read_by_another() -> None:
    minted = SessionTokens(b"shared").mint("2025-06-18", PARAMS)
    assert minted is not None and minted.isascii() and all(0x21 <= ord(ch) <= 0x7E for ch in minted)
    read = SessionTokens(b"shared").read(minted)
    assert read is not None
    version, params = read
    assert version == "2025-06-18"
    assert params.client_info.name == "claude-code"
    assert params.capabilities.sampling is not None and params.capabilities.roots.list_changed is True
    assert SessionTokens(b"shared").mint("2025-06-18", PARAMS) != minted  # every session its own id


def test_forged_altered_and_foreign_ids_are_refused() -> None:
    tokens = SessionTokens(b"shared")
    minted = tokens.mint("2025-06-18", PARAMS)
    assert minted is not None
    body, _, signature = minted.rpartition(".")
    assert SessionTokens(b"another secret").read(minted) is None
    assert tokens.read(f"{body}.{signature[::-1]}") is None
    altered = "B" if body.endswith("A") else "A"  # never the same character (ids are random)
    assert tokens.read(f"{body[:-1]}{altered}.{signature}") is None
    for garbage in ("", "0123456789abcdef0123456789abcdef", "m1.", "m1..", "m1.!!!.x", "m1." + "A" * (MAX_ID_LENGTH + 1)):
        assert tokens.read(garbage) is None
    # A well-signed id whose content is not a session (e.g. an unknown protocol version) is refused too.
    assert tokens.read(tokens.mint("1999-01-01", PARAMS) or "") is None


def test_versions_are_negotiated_like_the_sdk_and_huge_capabilities_are_not_minted() -> None:
    assert negotiate({"protocolVersion": "2024-11-05"}) == "2024-11-05"
    assert negotiate({"protocolVersion": "2099-01-01"}) == negotiate({})  # the latest handshake version
    noise = {f"k{i}": {"v": secrets.token_hex(16)} for i in range(200)}  # incompressible
    huge = {**PARAMS, "capabilities": {"experimental": noise}}
    assert SessionTokens(b"s").mint("2025-06-18", huge) is None  # that session stays on its replica


def test_the_shipped_deploy_files_are_valid(tmp_path: Path) -> None:
    """deploy/nginx.conf passes `nginx -t` (replica names pointed at loopback); the compose file has
    PostgreSQL, nginx and three replicas sharing one store URL and one session secret."""
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    services = compose["services"]
    replicas = [name for name in services if name.startswith("manifold-")]
    assert len(replicas) == 3 and {"postgres", "nginx"} <= set(services)
    assert len({services[r]["environment"]["MANIFOLD_DB"] for r in replicas}) == 1
    assert all("MANIFOLD_SESSION_SECRET" in services[r]["environment"] for r in replicas)
    if (reason := nginx_missing()) is not None:
        pytest.skip(reason)
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    for i in (1, 2, 3):
        conf = conf.replace(f"manifold-{i}:8765", f"127.0.0.1:{free_port()}")
    conf = conf.replace("listen 80;", f"listen 127.0.0.1:{free_port()};")
    conf = conf.replace("/etc/nginx/manifold-locations.conf", str(ROOT / "deploy" / "nginx-locations.conf"))
    (tmp_path / "nginx.conf").write_text(conf)
    checked = subprocess.run(
        [nginx_path() or "nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
         "-g", f"pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;"],
        check=False, capture_output=True, text=True, timeout=30,
    )
    assert checked.returncode == 0, checked.stderr
