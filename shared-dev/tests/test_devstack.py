"""`make run`'s pieces that decide what a person sees: port choice and the quiet console."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import port_for
import pytest
from brokerlink_devkit.devstack.errors import StartupError
from brokerlink_devkit.devstack.ports import PortBook
from brokerlink_devkit.devstack.supervisor import DevStack, _console_line


def test_a_port_from_a_setting_must_be_free(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        book = PortBook(tmp_path / "ports.json")
        with pytest.raises(StartupError) as error:
            book.take("api", setting="API_PORT", given=str(port))
    assert error.value.what.startswith(f"port {port} (API_PORT) is already in use")
    assert "API_PORT=<port> make run" in error.value.advice
    with pytest.raises(StartupError, match="API_PORT='eighty' is not a port number"):
        PortBook(tmp_path / "ports.json").take(
            "api", setting="API_PORT", given="eighty"
        )


def test_ports_are_remembered_and_moved_when_taken(tmp_path: Path) -> None:
    book = PortBook(tmp_path / "ports.json")
    first = book.take("sim", setting="SIM_PORT", given="0")
    book.save()
    book.release()  # as the stack does once up
    again = PortBook(tmp_path / "ports.json")
    assert again.take("sim", setting="SIM_PORT", given=None) == first
    again.release()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", first))
        squatter.listen()
        moved = PortBook(tmp_path / "ports.json").take(
            "sim", setting="SIM_PORT", given=None
        )
    assert moved != first


def test_a_chosen_port_is_outside_the_ephemeral_range(tmp_path: Path) -> None:
    """The OS hands ephemeral ports to outgoing connections; a port chosen from that range at
    start-up could be taken by one (the stack makes hundreds) before its server binds it, which
    is how two side-by-side `make run`s once failed with "address already in use"."""
    low, high = map(
        int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    )
    book = PortBook(tmp_path / "ports.json")
    chosen = [book.take(f"p{i}", setting=f"P{i}_PORT", given="0") for i in range(50)]
    assert not [port for port in chosen if low <= port <= high]
    assert all(1024 < port < 65536 for port in chosen)


def test_a_chosen_port_is_held_from_others_until_released_yet_its_server_can_bind_it(
    tmp_path: Path,
) -> None:
    """Two `make run`s choosing ports at the same moment never choose the same one."""
    book = PortBook(tmp_path / "ports.json")
    port = book.take("api", setting="API_PORT", given="0")
    assert port_for.port_is_used(port)  # what a second supervisor's choice checks
    other = PortBook(tmp_path / "other.json")
    assert port not in {
        other.take(f"p{i}", setting=f"P{i}_PORT", given="0") for i in range(20)
    }
    with socket.socket() as server:  # as asyncio, uvicorn and nats-server bind
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()
    book.release()
    assert not port_for.port_is_used(port)


def test_the_console_shows_warnings_and_hides_routine_lines() -> None:
    info = (
        '{"ts":"t","level":"INFO","service":"s","logger":"l","msg":"connected to NATS"}'
    )
    warning = '{"ts":"t","level":"WARNING","service":"s","logger":"l","msg":"retrying","attempt":2}'
    assert _console_line(info, threshold=30) is None
    assert _console_line(warning, threshold=30) == 'WARNING retrying {"attempt":2}'
    assert _console_line(info, threshold=20) == "INFO connected to NATS"
    assert _console_line('{"admin_url": "http://x"}', threshold=30) is None
    assert _console_line("Traceback (most recent call last):", threshold=30) is None
    assert (
        _console_line("2026 WARNING gateway slow", threshold=30)
        == "2026 WARNING gateway slow"
    )


def test_a_child_killed_from_outside_is_named_as_such(tmp_path: Path) -> None:
    stack = DevStack(tmp_path, tmp_path, {"PATH": os.environ["PATH"]})
    stack.logs.mkdir()
    child = stack.spawn("sleeper", ["sleep", "600"])
    try:
        assert child.process is not None
        os.killpg(child.process.pid, signal.SIGKILL)
        child.process.wait(10)
        with pytest.raises(StartupError) as stopped:
            stack.check_children("while running")
        assert stopped.value.what == "sleeper was stopped by SIGKILL while running"
        assert "fix what they name" not in stopped.value.advice
    finally:
        stack.stop()
