"""One simulated IB Gateway (`SimulatedGateway`: a listening port) and its client sessions."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, cast

from brokerlink_simulators.ib_gateway import protocol
from brokerlink_simulators.ib_gateway.protocol import In, Out
from brokerlink_simulators.ib_gateway.scenario import (
    AccountSpec,
    AccountValuesPatch,
    FaultPatch,
    GatewaySpec,
)

log = logging.getLogger(__name__)

ERR_CLIENT_ID_IN_USE = 326
ERR_NOT_CONNECTED = 502
CLIENT_ID_IN_USE_TEXT = "Unable to connect as the client id is already in use. Retry with a unique client id."
FARM_OK = (
    (2104, "Market data farm connection is OK:usfarm"),
    (2106, "HMDS data farm connection is OK:ushmds"),
    (2158, "Sec-def data farm connection is OK:secdefnj"),
)


@dataclass
class GatewayCounters:
    """What a gateway has seen since it was created (or since the last reset)."""

    connections_total: int = 0
    rejected_client_id: int = 0
    rejected_max_clients: int = 0
    sessions_dropped: int = 0
    restarts: int = 0
    requests_total: int = 0
    requests_by_type: Counter[str] = field(default_factory=Counter)

    def as_dict(self, sessions_open: int, api_sessions: int) -> dict[str, Any]:
        return {
            "connections_total": self.connections_total,
            "sessions_open": sessions_open,
            "api_sessions": api_sessions,
            "rejected_client_id": self.rejected_client_id,
            "rejected_max_clients": self.rejected_max_clients,
            "sessions_dropped": self.sessions_dropped,
            "restarts": self.restarts,
            "requests_total": self.requests_total,
            "requests_by_type": dict(self.requests_by_type),
        }


class GatewaySession(asyncio.Protocol):
    """One client TCP connection: handshake, START_API, then request/answer."""

    def __init__(self, gateway: SimulatedGateway) -> None:
        self.gateway = gateway
        self.transport: asyncio.Transport | None = None
        self.client_id: int | None = None
        self._decoder = protocol.FrameDecoder()
        self._version_seen = False
        self._drop_timer: asyncio.TimerHandle | None = None
        self._next_order_id = 1
        # live subscriptions, so admin changes are pushed like a real gateway does
        self.account_updates_code: str | None = None
        self.summary_subscriptions: dict[int, set[str]] = {}
        self.multi_subscriptions: dict[int, tuple[str, str]] = {}
        self.positions_subscribed = False
        self._handlers: dict[int, Callable[[list[str]], object]] = {
            In.REQ_ACCOUNT_UPDATES: self._account_updates,
            In.REQ_ACCOUNT_SUMMARY: self._account_summary,
            In.CANCEL_ACCOUNT_SUMMARY: lambda f: self.summary_subscriptions.pop(
                int(f[2]), None
            ),
            In.REQ_POSITIONS: self._positions,
            In.CANCEL_POSITIONS: self._cancel_positions,
            In.REQ_ACCOUNT_UPDATES_MULTI: self._account_updates_multi,
            In.CANCEL_ACCOUNT_UPDATES_MULTI: lambda f: self.multi_subscriptions.pop(
                int(f[2]), None
            ),
            In.REQ_POSITIONS_MULTI: self._positions_multi,
            In.CANCEL_POSITIONS_MULTI: lambda _f: None,
            In.REQ_EXECUTIONS: lambda f: self.send(
                protocol.frame(Out.EXECUTION_DATA_END, 1, f[2])
            ),
            In.REQ_OPEN_ORDERS: lambda _f: self.send(
                protocol.frame(Out.OPEN_ORDER_END, 1)
            ),
            In.REQ_ALL_OPEN_ORDERS: lambda _f: self.send(
                protocol.frame(Out.OPEN_ORDER_END, 1)
            ),
            In.REQ_COMPLETED_ORDERS: lambda _f: self.send(
                protocol.frame(Out.COMPLETED_ORDERS_END)
            ),
            In.REQ_AUTO_OPEN_ORDERS: lambda _f: None,
            In.REQ_MARKET_DATA_TYPE: lambda _f: None,
            In.REQ_MANAGED_ACCTS: lambda _f: self.send(
                protocol.managed_accounts(self.gateway.accounts)
            ),
            In.REQ_CURRENT_TIME: lambda _f: self.send(
                protocol.frame(Out.CURRENT_TIME, 1, int(time.time()))
            ),
            In.REQ_IDS: lambda _f: self.send(
                protocol.next_valid_id(self._next_order_id)
            ),
        }

    # ---- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(
            asyncio.Transport, transport
        )  # uvloop's transports are not subclasses
        self.gateway.sessions.add(self)
        self.gateway.counters.connections_total += 1
        if drop_after := self.gateway.spec.faults.drop_after_s:
            self._drop_timer = asyncio.get_running_loop().call_later(
                drop_after, self._drop
            )

    def connection_lost(self, _exc: Exception | None) -> None:
        if self._drop_timer:
            self._drop_timer.cancel()
        self.gateway.sessions.discard(self)
        if self.client_id is not None:
            holders = self.gateway.client_ids.get(self.client_id, [])
            if self in holders:
                holders.remove(self)
            if not holders:
                self.gateway.client_ids.pop(self.client_id, None)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._decoder.feed(data)
        except ValueError as exc:
            log.warning(
                "malformed client stream, closing",
                extra={"gateway": self.gateway.name, "error": str(exc)},
            )
            self.close()
            return
        for fields in messages:
            self._handle(fields)

    # ---- sending ---------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Write an answer, after the gateway's configured delay."""
        delay_ms = self.gateway.spec.faults.delay_ms
        if delay_ms:
            asyncio.get_running_loop().call_later(delay_ms / 1000, self._write, data)
        else:
            self._write(data)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _drop(self) -> None:
        self.gateway.counters.sessions_dropped += 1
        log.info(
            "dropping session (fault)",
            extra={"gateway": self.gateway.name, "client_id": self.client_id},
        )
        self.close()

    # ---- requests --------------------------------------------------------------------------

    def _handle(self, fields: list[str]) -> None:
        if not self._version_seen:
            low, high = protocol.parse_version_range(fields)
            if high < protocol.SERVER_VERSION or low > protocol.SERVER_VERSION:
                self.close()
                return
            self._version_seen = True
            self.send(protocol.handshake_reply())
            return
        if not fields:
            return
        try:
            msg_id = int(fields[0])
        except ValueError:
            return
        counters = self.gateway.counters
        counters.requests_total += 1
        name = In(msg_id).name if msg_id in In._value2member_map_ else str(msg_id)
        counters.requests_by_type[name] += 1
        if msg_id == In.START_API:
            self._start_api(fields)
            return
        if self.client_id is None:
            return  # nothing but START_API before the API is started
        handler = self._handlers.get(msg_id)
        if handler is not None:
            try:
                handler(fields)
            except (IndexError, ValueError):
                log.warning(
                    "bad request fields",
                    extra={"gateway": self.gateway.name, "msg_id": msg_id},
                )

    def _start_api(self, fields: list[str]) -> None:
        client_id = int(fields[2])
        gateway = self.gateway
        holders = gateway.client_ids.setdefault(client_id, [])
        if holders and not gateway.spec.faults.allow_duplicate_client_id:
            gateway.counters.rejected_client_id += 1
            self.send(protocol.error(-1, ERR_CLIENT_ID_IN_USE, CLIENT_ID_IN_USE_TEXT))
            self.gateway.loop_call_soon(self.close)
            return
        if gateway.api_session_count() >= gateway.spec.max_clients:
            gateway.counters.rejected_max_clients += 1
            self.send(
                protocol.error(
                    -1,
                    ERR_NOT_CONNECTED,
                    f"Maximum number of API clients ({gateway.spec.max_clients}) reached",
                )
            )
            self.gateway.loop_call_soon(self.close)
            return
        holders.append(self)
        self.client_id = client_id
        self.send(
            protocol.next_valid_id(self._next_order_id)
            + protocol.managed_accounts(gateway.accounts)
            + b"".join(protocol.error(-1, code, text) for code, text in FARM_OK)
        )

    def _account_updates(self, fields: list[str]) -> None:
        subscribe, code = fields[2] == "1", fields[3]
        if not subscribe:
            self.account_updates_code = None
            return
        account = (
            self.gateway.accounts.get(code)
            if code
            else next(iter(self.gateway.accounts.values()))
        )
        if account is None:
            self.send(
                protocol.error(
                    -1, 321, f"Error validating request: unknown account {code}"
                )
            )
            self.send(protocol.frame(Out.ACCT_DOWNLOAD_END, 1, code))
            return
        self.account_updates_code = account.code
        self.send(protocol.account_updates(account))

    def _account_summary(self, fields: list[str]) -> None:
        req_id, tags = int(fields[2]), set(fields[4].split(","))
        self.summary_subscriptions[req_id] = tags
        self.send(self._summary(req_id, tags))

    def _summary(self, req_id: int, tags: set[str]) -> bytes:
        parts = [
            protocol.frame(
                Out.ACCOUNT_SUMMARY, 1, req_id, account.code, tag, value, currency
            )
            for account in self.gateway.accounts.values()
            for tag, value, currency in protocol.summary_rows(account, tags)
        ]
        parts.append(protocol.frame(Out.ACCOUNT_SUMMARY_END, 1, req_id))
        return b"".join(parts)

    def _positions(self, _fields: list[str]) -> None:
        self.positions_subscribed = True
        parts = [
            protocol.position(account.code, p)
            for account in self.gateway.accounts.values()
            for p in account.positions
        ]
        parts.append(protocol.frame(Out.POSITION_END, 1))
        self.send(b"".join(parts))

    def _cancel_positions(self, _fields: list[str]) -> None:
        self.positions_subscribed = False

    def _account_updates_multi(self, fields: list[str]) -> None:
        req_id, code, model_code = int(fields[2]), fields[3], fields[4]
        self.multi_subscriptions[req_id] = (code, model_code)
        self.send(self._multi(req_id, code, model_code))

    def _multi(self, req_id: int, code: str, model_code: str) -> bytes:
        accounts = self.gateway.accounts
        chosen = (
            list(accounts.values())
            if code in ("", "All")
            else [a for c, a in accounts.items() if c == code]
        )
        parts = [
            protocol.frame(
                Out.ACCOUNT_UPDATE_MULTI,
                1,
                req_id,
                account.code,
                model_code,
                key,
                value,
                currency,
            )
            for account in chosen
            for key, value, currency in protocol.account_value_rows(account)
        ]
        parts.append(protocol.frame(Out.ACCOUNT_UPDATE_MULTI_END, 1, req_id))
        return b"".join(parts)

    def _positions_multi(self, fields: list[str]) -> None:
        req_id, code, model_code = int(fields[2]), fields[3], fields[4]
        accounts = self.gateway.accounts
        chosen = (
            list(accounts.values())
            if code in ("", "All")
            else [a for c, a in accounts.items() if c == code]
        )
        parts = [
            protocol.position_multi(req_id, a.code, model_code, p)
            for a in chosen
            for p in a.positions
        ]
        parts.append(protocol.frame(Out.POSITION_MULTI_END, 1, req_id))
        self.send(b"".join(parts))

    # ---- pushes after an admin change ------------------------------------------------------

    def push_account(self, old: AccountSpec | None, new: AccountSpec) -> None:
        """Send a changed account to the subscriptions that cover it, as a real gateway would."""
        if self.client_id is None:
            return
        if self.account_updates_code == new.code:
            current = {p.contract_id for p in new.positions}
            gone = [
                p
                for p in (old.positions if old else [])
                if p.contract_id not in current
            ]
            closed = [
                protocol.portfolio_value(new.code, p, quantity=Decimal(0)) for p in gone
            ]
            full = protocol.account_updates(new)
            self.send(b"".join(closed) + full)
        if self.positions_subscribed:
            self.send(b"".join(protocol.position(new.code, p) for p in new.positions))
        for req_id, tags in self.summary_subscriptions.items():
            self.send(self._summary(req_id, tags))
        for req_id, (code, model_code) in self.multi_subscriptions.items():
            if code in ("", "All", new.code):
                self.send(self._multi(req_id, code, model_code))

    def send_error(self, code: int, text: str) -> None:
        if self.client_id is not None:
            self.send(protocol.error(-1, code, text))


class SimulatedGateway:
    """One listening port serving many client sessions over one set of managed accounts."""

    def __init__(self, spec: GatewaySpec, host: str) -> None:
        self.spec = spec
        self.host = host
        self.port = spec.port
        self.accounts: dict[str, AccountSpec] = {a.code: a for a in spec.accounts}
        self.sessions: set[GatewaySession] = set()
        self.client_ids: dict[int, list[GatewaySession]] = {}
        self.counters = GatewayCounters()
        self._server: asyncio.Server | None = None
        self._reopen: asyncio.TimerHandle | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def listening(self) -> bool:
        return self._server is not None

    def api_session_count(self) -> int:
        return sum(len(h) for h in self.client_ids.values())

    def loop_call_soon(self, callback: Callable[[], None]) -> None:
        asyncio.get_running_loop().call_soon(callback)

    async def start(self) -> None:
        """Start listening (unless the gateway is configured to refuse connections)."""
        if self.spec.faults.refuse_connections or self._server is not None:
            return
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: GatewaySession(self),
            self.host,
            self.port,
            reuse_address=True,
            backlog=2048,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("gateway listening", extra={"gateway": self.name, "port": self.port})

    def stop_listening(self) -> None:
        """Stop accepting: new connects are refused by the OS; open sessions stay."""
        if self._server is not None:
            self._server.close()  # not wait_closed: on 3.12+ it would wait for every session
            self._server = None
            log.info(
                "gateway stopped listening",
                extra={"gateway": self.name, "port": self.port},
            )

    def drop_sessions(self) -> int:
        """Close every open session; returns how many."""
        sessions = list(self.sessions)
        for session in sessions:
            session.close()
        self.counters.sessions_dropped += len(sessions)
        return len(sessions)

    async def restart(self, down_for_s: float = 0.0) -> int:
        """The daily restart: drop every session, optionally stay down for a while."""
        self.counters.restarts += 1
        if self._reopen:
            self._reopen.cancel()
            self._reopen = None
        if down_for_s > 0:
            self.stop_listening()
        dropped = self.drop_sessions()
        if down_for_s > 0 and not self.spec.faults.refuse_connections:
            loop = asyncio.get_running_loop()
            self._reopen = loop.call_later(
                down_for_s, lambda: loop.create_task(self.start())
            )
        log.info(
            "gateway restarted",
            extra={"gateway": self.name, "dropped": dropped, "down_for_s": down_for_s},
        )
        return dropped

    async def apply_faults(self, patch: FaultPatch) -> None:
        """Merge a fault patch; starting or stopping the listener as needed."""
        changes = patch.model_dump(exclude_unset=True)
        max_clients = changes.pop("max_clients", None)
        if changes.get("drop_after_s") == 0:
            changes["drop_after_s"] = None
        faults = self.spec.faults.model_copy(update=changes)
        self.spec = self.spec.model_copy(
            update={
                "faults": faults,
                **({"max_clients": max_clients} if max_clients else {}),
            }
        )
        if faults.refuse_connections:
            self.stop_listening()
        else:
            await self.start()

    def set_accounts(self, accounts: list[AccountSpec]) -> None:
        """Replace the managed accounts (clients see the new list on their next connect)."""
        old = self.accounts
        self.accounts = {a.code: a for a in accounts}
        self.spec = self.spec.model_copy(update={"accounts": accounts})
        for account in accounts:
            self._push(old.get(account.code), account)

    def put_account(self, account: AccountSpec) -> None:
        old = self.accounts.get(account.code)
        self.accounts[account.code] = account
        self.spec = self.spec.model_copy(
            update={"accounts": list(self.accounts.values())}
        )
        self._push(old, account)

    def patch_account(self, code: str, patch: AccountValuesPatch) -> AccountSpec:
        old = self.accounts[code]
        new = AccountSpec.model_validate(
            {**old.model_dump(), **patch.model_dump(exclude_unset=True)}
        )
        self.put_account(new)
        return new

    def remove_account(self, code: str) -> None:
        if len(self.accounts) <= 1:
            raise ValueError("a gateway must manage at least one account")
        del self.accounts[code]
        self.spec = self.spec.model_copy(
            update={"accounts": list(self.accounts.values())}
        )

    def _push(self, old: AccountSpec | None, new: AccountSpec) -> None:
        for session in list(self.sessions):
            session.push_account(old, new)

    def broadcast_error(self, code: int, text: str) -> int:
        """Send an error/notice (e.g. 1100 lost, 1102 restored) to every API session."""
        sessions = [s for s in self.sessions if s.client_id is not None]
        for session in sessions:
            session.send_error(code, text)
        return len(sessions)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "host": self.host,
            "port": self.port,
            "listening": self.listening,
            "max_clients": self.spec.max_clients,
            "faults": self.spec.faults.model_dump(mode="json"),
            "accounts": [a.model_dump(mode="json") for a in self.accounts.values()],
            "counters": self.counters_dict(),
        }

    def counters_dict(self) -> dict[str, Any]:
        return self.counters.as_dict(len(self.sessions), self.api_session_count())

    async def close(self) -> None:
        """Stop listening and drop every session (simulator shutdown or gateway removal)."""
        if self._reopen:
            self._reopen.cancel()
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.abort()
