"""Which brokerlink user the IB accounts behind a gateway belong to.

An IB Gateway cannot tell brokerlink's users apart, and one gateway answers under every address
of its host (a LAN or Docker bridge address, another DNS name, a name rebound after it was
saved), so an address says nothing about whose gateway it is. The accounts it manages do. The
first user whose session sees an account claims it; a session of another user that meets a
claimed account is closed before anything is read through it.

A claim lists its holders: the user's integrations (account ids) that read through a session
seeing the account, and short-lived holders for a connection that serves no integration yet (a
one-shot test, a session opened before its first account). Once an integration has held it, it
stays its user's: removing the integrations, a session idling or a connector restarting releases
nothing, so another user never reaches the owner's accounts in a gap. It goes with its user (the
last integration's removal says the user is deleted with it); a claim no integration ever held
goes when its short-lived holders expire or let go.

A user's integrations reading through one gateway hold its accounts together, through a gateway
hold: one record per (user, set of accounts the gateway manages) listing those integrations, and
one holder on each account's claim for the whole hold. A gateway managing a hundred accounts then
costs a hundred claim writes once, not for every integration added behind it; adding one is a
single write to the hold. A hold is claimed, then marked held; when its last integration goes it
stays, holding the accounts for its user, and the user's next integration behind that gateway
joins it again. It is released when its user is deleted with the last one, or when the round
claiming it is refused for another user's account (what it claimed was never that user's
gateway). Each claiming round has a fresh
generation, the claims' holder names it, so a round that starts while an earlier one is still
releasing never has its holder removed by that release; the newer round retires the older
generation's leftovers itself.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum

# How long a holder that is no integration keeps a claim: long enough for a test or for a new
# session's first refresh to register its account, short enough that a crash mid-test does not
# keep a gateway away from its owner for long.
TRANSIENT_HOLD_S = 300.0

_TRANSIENT = "t:"
_HOLD = "g:"


@dataclass(frozen=True, slots=True)
class AccountClaim:
    """One account's owner and what holds the claim."""

    user_id: int
    holders: frozenset[str]

    def live_holders(self, now: float) -> frozenset[str]:
        """The holders still holding at `now` (transient ones expire)."""
        return frozenset(h for h in self.holders if not _expired(h, now))


def claim_key(secret: bytes, account_code: str) -> str:
    """The KV key of an account's claim: a keyed hash, so no account code is ever a subject
    name (which NATS logs, monitoring and key listings show)."""
    digest = hmac.new(
        secret, account_code.strip().upper().encode(), hashlib.sha256
    ).hexdigest()
    return f"a{digest[:40]}"


def hold_key(secret: bytes, user_id: int, account_codes: Iterable[str]) -> str:
    """The KV key of a user's hold on the accounts one gateway manages (a keyed hash again)."""
    codes = ",".join(sorted({c.strip().upper() for c in account_codes}))
    digest = hmac.new(secret, f"{user_id}|{codes}".encode(), hashlib.sha256).hexdigest()
    return f"s{digest[:40]}"


def is_hold_key(key: str) -> bool:
    return key.startswith("s") and len(key) == 41


def hold_holder(key: str, generation: str) -> str:
    """The holder a gateway hold's generation puts on each of its accounts' claims."""
    return f"{_HOLD}{key}:{generation}"


class HoldState(StrEnum):
    CLAIMING = "claiming"  # its accounts' claims are being written; not yet proven
    HELD = "held"  # every account's claim names this generation's holder
    RELEASING = "releasing"  # refused, or its user gone; holders being removed


@dataclass(frozen=True, slots=True)
class GatewayHold:
    """The integrations of one user that read through gateways managing one set of accounts."""

    user_id: int
    generation: str
    state: HoldState
    claims: tuple[str, ...]  # the claim keys of the accounts
    integrations: frozenset[str]
    # earlier generations whose holders may still be on the claims
    retired: tuple[str, ...] = field(default=())

    @property
    def generations(self) -> tuple[str, ...]:
        return (self.generation, *self.retired)


def joined(
    current: GatewayHold | None,
    user_id: int,
    claims: Iterable[str],
    integrations: frozenset[str],
    fresh_generation: str,
) -> GatewayHold:
    """The hold once `integrations` read through it. A hold being released starts a new
    generation that retires the old one."""
    if current is not None and current.user_id != user_id:
        raise ValueError("a gateway hold's key names its user")
    if current is None or current.state is HoldState.RELEASING:
        retired = current.generations if current is not None else ()
        return GatewayHold(
            user_id,
            fresh_generation,
            HoldState.CLAIMING,
            tuple(sorted(set(claims))),
            integrations,
            retired,
        )
    return replace(current, integrations=current.integrations | integrations)


def settled(current: GatewayHold) -> GatewayHold:
    """The hold once its generation holds every claim and older generations are gone."""
    return replace(current, state=HoldState.HELD, retired=())


def left(
    current: GatewayHold, integration: str, *, owner_deleted: bool = False
) -> GatewayHold:
    """The hold once `integration` stops reading through it. The last one going leaves the hold
    in place with its accounts claimed: the gateway stays its user's, as account-api keeps an
    endpoint its owner's, so nobody reaches those accounts under another address in the gap.
    Only when the user is deleted with it does the last one going release the hold."""
    remaining = current.integrations - {integration}
    state = HoldState.RELEASING if owner_deleted and not remaining else current.state
    return replace(current, integrations=remaining, state=state)


def refused(
    current: GatewayHold, integrations: frozenset[str], generation: str
) -> GatewayHold:
    """The hold once a round of `generation`, refused for another user's account, takes
    `integrations` off again. A hold still claiming for that round is released when none is
    left (what it claimed was never proven the user's); one another round has proven or
    started again since stays as it is."""
    if current.state is not HoldState.CLAIMING or current.generation != generation:
        return current
    remaining = current.integrations - integrations
    state = HoldState.RELEASING if not remaining else current.state
    return replace(current, integrations=remaining, state=state)


def integration_holder(account_id: int) -> str:
    return f"acct:{account_id}"


def transient_holder(now: float, nonce: str) -> str:
    """A holder that lets go by itself `TRANSIENT_HOLD_S` after `now`."""
    return f"{_TRANSIENT}{now + TRANSIENT_HOLD_S:.0f}:{nonce}"


def claimed(
    current: AccountClaim | None,
    user_id: int,
    holders: frozenset[str],
    now: float,
) -> AccountClaim | None:
    """The claim once `holders` of `user_id` hold it, or None: another user owns the account."""
    live = current.live_holders(now) if current is not None else frozenset()
    if current is None or not live:
        return AccountClaim(user_id, holders)
    if current.user_id != user_id:
        return None
    return AccountClaim(user_id, live | holders)


def released(current: AccountClaim, holder: str, now: float) -> AccountClaim | None:
    """The claim once `holder` lets go, or None: nothing holds it any more (delete it)."""
    remaining = current.live_holders(now) - {holder}
    return AccountClaim(current.user_id, remaining) if remaining else None


def _expired(holder: str, now: float) -> bool:
    if not holder.startswith(_TRANSIENT):
        return False
    expiry = holder[len(_TRANSIENT) :].split(":", 1)[0]
    try:
        return float(expiry) < now
    except ValueError:
        return True
