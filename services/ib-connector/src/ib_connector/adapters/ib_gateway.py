"""The one place that talks to an IB Gateway, through the real ib_async client (read-only)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from brokerlink_shared.reach import HostNotAllowed, NetworkReach
from ib_async import IB
from ib_async.ib import StartupFetch

from ib_connector.domain.snapshot import AccountValueRow, Holding, to_decimal

log = logging.getLogger(__name__)

CLIENT_ID_IN_USE = 326
NOT_CONNECTED = 502
# Informational "farm OK" notices and similar; never a failure.
_INFO_CODES = range(2100, 2200)
# Codes that end a connect attempt at once instead of waiting for its timeout.
_FATAL_AT_CONNECT = {CLIENT_ID_IN_USE, NOT_CONNECTED, 504}


class GatewayError(Exception):
    """A gateway call failed; `code` is IB's error code (or "timeout"), `message` is user-facing."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


GatewayNotice = Callable[[int, str], None]
GatewayClosed = Callable[[str], None]


class IBGatewayClient:
    """One ib_async connection. Callbacks report notices (1100/1102) and an unexpected close."""

    def __init__(
        self,
        on_notice: GatewayNotice,
        on_closed: GatewayClosed,
        reach: NetworkReach | None = None,
    ) -> None:
        self._reach = reach
        self._ib = IB()
        self._ib.RaiseRequestErrors = True
        self._on_notice = on_notice
        self._on_closed = on_closed
        self._closing = False
        self._connect_failure: asyncio.Future[GatewayError] | None = None
        self._subscribed: str | None = (
            None  # account of the live reqAccountUpdates subscription
        )
        self._downloaded_at = 0.0
        # the read waiting for each account's download to end (see `_download_end`)
        self._downloads: dict[str, asyncio.Future[None]] = {}
        self._ib.wrapper.accountDownloadEnd = self._download_end  # type: ignore[method-assign, assignment]
        self._ib.errorEvent += self._error
        self._ib.disconnectedEvent += self._disconnected

    @property
    def connected(self) -> bool:
        return bool(self._ib.isConnected())

    def managed_accounts(self) -> list[str]:
        return list(self._ib.managedAccounts())

    async def connect(
        self, host: str, port: int, client_id: int, timeout_s: float
    ) -> list[str]:
        """Open the API session; returns the managed accounts or raises `GatewayError`.

        With a reach policy the host is resolved and checked first, and the connection goes to
        the checked address (a name cannot resolve elsewhere between the check and the connect).
        """
        address = host
        if self._reach is not None:
            try:
                address = (await self._reach.resolve(host, port))[0]
            except HostNotAllowed as exc:
                raise GatewayError(exc.code, exc.message) from None
        loop = asyncio.get_running_loop()
        failure: asyncio.Future[GatewayError] = loop.create_future()
        self._connect_failure = failure
        attempt = asyncio.ensure_future(
            self._ib.connectAsync(
                address,
                port,
                client_id,
                timeout=timeout_s,
                readonly=True,
                fetchFields=StartupFetch(0),
            )
        )
        try:
            done, _ = await asyncio.wait(
                {attempt, failure},
                timeout=timeout_s + 1,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if failure in done:
                raise failure.result()
            if attempt in done:
                attempt.result()
                return self.managed_accounts()
            raise GatewayError(
                "timeout", f"no answer from {host}:{port} within {timeout_s:g}s"
            )
        except ConnectionRefusedError:
            raise GatewayError(
                str(NOT_CONNECTED), f"connection refused by {host}:{port}"
            ) from None
        except TimeoutError:
            raise GatewayError(
                "timeout", f"no answer from {host}:{port} within {timeout_s:g}s"
            ) from None
        except OSError as exc:
            raise GatewayError(
                str(NOT_CONNECTED),
                f"cannot connect to {host}:{port}: {exc.strerror or exc}",
            ) from None
        except ConnectionError as exc:
            raise GatewayError(
                str(NOT_CONNECTED), f"{host}:{port} closed the connection: {exc}"
            ) from None
        finally:
            self._connect_failure = None
            if not attempt.done():
                attempt.cancel()
                with contextlib.suppress(BaseException):
                    await attempt
            if not self.connected:
                self._closing = True
                self._ib.disconnect()

    async def read_account(
        self, code: str, timeout_s: float, max_age_s: float = 60.0
    ) -> tuple[list[AccountValueRow], list[Holding]]:
        """Account values and portfolio of one account.

        `reqAccountUpdates` subscribes: the gateway keeps pushing changes to the subscribed
        account, so while the subscription is on `code` and its download is younger than
        `max_age_s`, ib_async's cache is as fresh as asking again (TWS answers from the same
        cache). Otherwise one round trip (re)subscribes. A session has one such subscription,
        so callers serialise reads per session.
        """
        loop = asyncio.get_running_loop()
        if self._subscribed != code or loop.time() - self._downloaded_at > max_age_s:
            await self._subscribe(code, timeout_s)
        rows = [
            AccountValueRow(v.tag, v.value, v.currency)
            for v in self._ib.accountValues(code)
            if not v.modelCode
        ]
        holdings = [_holding(item) for item in self._ib.portfolio(code)]
        return rows, holdings

    async def _subscribe(self, code: str, timeout_s: float) -> None:
        wrapper = self._ib.wrapper
        self._subscribed = None
        # Drop cached rows first, so holdings and currencies that are gone do not linger.
        wrapper.portfolio.pop(code, None)
        for key in [k for k in wrapper.accountValues if k[0] == code]:
            del wrapper.accountValues[key]
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._downloads[code] = done
        try:
            self._ib.client.reqAccountUpdates(True, code)  # type: ignore[no-untyped-call]
            await asyncio.wait_for(done, timeout_s)
        except TimeoutError:
            raise GatewayError(
                "timeout", f"gateway did not answer within {timeout_s:g}s"
            ) from None
        except ConnectionError as exc:
            raise GatewayError(
                "disconnected", f"gateway connection closed during the request: {exc}"
            ) from None
        finally:
            if self._downloads.get(code) is done:
                del self._downloads[code]
        self._subscribed = code
        self._downloaded_at = loop.time()

    def _download_end(self, account: str) -> None:
        """IB ends each account's download naming the account. ib_async's own handler ignores
        the name and ends whichever read waits, so the late end of an earlier read that timed
        out (another account's) ended the next read before its values were in."""
        waiter = self._downloads.pop(account, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def close(self) -> None:
        """Disconnect on purpose (no closed callback)."""
        self._closing = True
        if self.connected or self._ib.client.isConnected():  # type: ignore[no-untyped-call]
            self._ib.disconnect()

    def _error(self, req_id: int, code: int, text: str, _contract: Any) -> None:
        if code in _INFO_CODES:
            log.debug("gateway notice", extra={"ib_code": code, "ib_text": text})
            return
        failure = self._connect_failure
        if failure is not None and code in _FATAL_AT_CONNECT and not failure.done():
            failure.set_result(GatewayError(str(code), text))
            return
        if req_id == -1:
            self._on_notice(code, text)

    def _disconnected(self) -> None:
        self._subscribed = None
        for waiter in self._downloads.values():
            if not waiter.done():
                waiter.set_exception(
                    ConnectionError("the gateway closed the connection")
                )
        self._downloads.clear()
        if not self._closing and self._connect_failure is None:
            self._on_closed("connection to the gateway closed")


def _holding(item: Any) -> Holding:
    contract = item.contract
    return Holding(
        symbol=contract.symbol or contract.localSymbol,
        sec_type=contract.secType,
        currency=contract.currency,
        quantity=to_decimal(item.position) or Decimal(0),
        average_cost=to_decimal(item.averageCost),
        market_price=to_decimal(item.marketPrice),
        market_value=to_decimal(item.marketValue),
        unrealized_pnl=to_decimal(item.unrealizedPNL),
    )
