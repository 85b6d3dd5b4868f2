"""The deploy smoke run's "container network" for a Python process (loaded by Python at start-up
because this directory is put on PYTHONPATH; it changes nothing else about the process).

BROKERLINK_SMOKE_NET (JSON) gives:
- `hosts`: host name -> addresses on this machine (what cluster DNS / compose's network would
  answer); every resolution through Python or uvloop sees it, as a container's resolver would;
- `virtual`: private addresses (as a cluster's pod network has) -> the loopback address behind
  each: names may resolve to them (what the application sees, e.g. to check the IB gateway is in
  an allowed network) and a connect to one reaches the address behind it;
- `pod_ip`: this pod's own address: a bind to all interfaces (0.0.0.0) binds here, and a connect
  to 127.0.0.1 from inside the pod (healthcheck commands) reaches it;
- `blocked_modules`: top-level modules of distributions the image does not contain (dev-only
  dependencies): importing one fails as it would in the image.
"""

from __future__ import annotations

import importlib.abc
import json
import os
import socket
import sys

_NET = json.loads(os.environ.get("BROKERLINK_SMOKE_NET", "{}"))
_HOSTS: dict[str, list[str]] = _NET.get("hosts", {})
_VIRTUAL: dict[str, str] = _NET.get("virtual", {})
_POD_IP: str | None = _NET.get("pod_ip")
_LOOPBACK_TO_POD: bool = bool(_NET.get("loopback_to_pod"))
_WILDCARD = {"0.0.0.0", ""}
_LOOPBACK = {"127.0.0.1", "localhost"}


def _map(host: object, *, binding: bool) -> object:
    if isinstance(host, bytes):
        host = host.decode()
    if not isinstance(host, str) and host is not None:
        return host
    if host is None:
        return _POD_IP if binding and _POD_IP else host
    if host in _HOSTS:
        address = _HOSTS[host][0]
        return _VIRTUAL.get(address, address)
    if host in _VIRTUAL:
        return _VIRTUAL[host]
    if _POD_IP and host in _WILDCARD:
        return _POD_IP
    if _POD_IP and _LOOPBACK_TO_POD and host in _LOOPBACK and not binding:
        return _POD_IP
    return host


_getaddrinfo = socket.getaddrinfo


def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):  # type: ignore[no-untyped-def]
    if isinstance(host, str) and host in _HOSTS:
        out = []
        for address in _HOSTS[host]:
            out += _getaddrinfo(address, port, family, type, proto, flags)
        return out
    binding = bool(flags & socket.AI_PASSIVE)
    return _getaddrinfo(_map(host, binding=binding), port, family, type, proto, flags)


socket.getaddrinfo = getaddrinfo
_bind = socket.socket.bind
_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


def _bind_mapped(self, address):  # type: ignore[no-untyped-def]
    if isinstance(address, tuple) and self.family == socket.AF_INET:
        address = (_map(address[0], binding=True), *address[1:])
    return _bind(self, address)


def _connect_mapped(self, address):  # type: ignore[no-untyped-def]
    if isinstance(address, tuple) and self.family == socket.AF_INET:
        address = (_map(address[0], binding=False), *address[1:])
    return _connect(self, address)


def _connect_ex_mapped(self, address):  # type: ignore[no-untyped-def]
    if isinstance(address, tuple) and self.family == socket.AF_INET:
        address = (_map(address[0], binding=False), *address[1:])
    return _connect_ex(self, address)


socket.socket.bind = _bind_mapped  # type: ignore[method-assign]
socket.socket.connect = _connect_mapped  # type: ignore[method-assign]
socket.socket.connect_ex = _connect_ex_mapped  # type: ignore[method-assign]


def _patch_uvloop() -> None:
    """uvloop resolves and binds in C: give it the same view through its Python-level methods."""
    try:
        import uvloop
    except ImportError:
        return

    class MappedLoop(uvloop.Loop):  # type: ignore[misc, name-defined]
        async def getaddrinfo(self, host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
            if isinstance(host, str) and host in _HOSTS:  # numeric answers: no lookup
                return getaddrinfo(host, port, *args, **kwargs)
            flags = kwargs.get("flags", 0)
            return await super().getaddrinfo(
                _map(host, binding=bool(flags & socket.AI_PASSIVE)),
                port,
                *args,
                **kwargs,
            )

        async def create_connection(
            self, protocol_factory, host=None, port=None, *args, **kwargs
        ):  # type: ignore[no-untyped-def]
            return await super().create_connection(
                protocol_factory, _map(host, binding=False), port, *args, **kwargs
            )

        async def create_server(
            self, protocol_factory, host=None, port=None, *args, **kwargs
        ):  # type: ignore[no-untyped-def]
            if kwargs.get("sock") is None:
                host = _map(host, binding=True)
            return await super().create_server(
                protocol_factory, host, port, *args, **kwargs
            )

    uvloop.Loop = MappedLoop  # type: ignore[misc]
    uvloop.new_event_loop = MappedLoop  # type: ignore[assignment]


class _ImageContents(importlib.abc.MetaPathFinder):
    """Fail imports of modules the image does not contain."""

    def __init__(self, blocked: set[str]) -> None:
        self.blocked = blocked

    def find_spec(self, fullname, path=None, target=None):  # type: ignore[no-untyped-def]
        if path is None and fullname in self.blocked:
            raise ModuleNotFoundError(
                f"No module named {fullname!r} (not in this image: a dev-only dependency)",
                name=fullname,
            )
        return None


_patch_uvloop()
if _NET.get("blocked_modules"):
    sys.meta_path.insert(0, _ImageContents(set(_NET["blocked_modules"])))
