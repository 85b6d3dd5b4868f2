"""The dead-letter stream for operators: list, show, replay and purge parked messages.

A replay publishes the parked message again on its original subject, with its original body
and headers (so the same event id and correlation id), then removes it from the dead-letter
stream. Consumers de-duplicate by event id and connectors by result id, so replaying a message
twice (say, the operator's command died between the publish and the delete) applies it once.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from brokerlink_shared.subjects import DEAD_LETTER, DEAD_LETTERS, Topology

# Headers the parking adds; a replay does not carry them (nor JetStream's `Nats-*`) back.
_PARKING_HEADERS = frozenset({"X-Original-Subject", "X-Error", "X-Delivered"})


class DeadLetterNotFound(LookupError):
    """No parked message with that sequence number (in that service's dead letters)."""


@dataclass(frozen=True)
class DeadLetter:
    """One parked message."""

    seq: int
    service: str
    original_subject: str
    error: str
    delivered: int
    parked_at: datetime | None
    headers: dict[str, str]
    data: bytes


class DeadLetterStream:
    """The dead letters of one namespace (optionally of one service)."""

    def __init__(
        self, js: JetStreamContext, topology: Topology, service: str | None = None
    ) -> None:
        self._js = js
        self._topology = topology
        self._stream = topology.stream_name(DEAD_LETTERS)
        self._subject = (
            topology.dead_letter_subject(service)
            if service
            else f"{topology.namespace}.{DEAD_LETTER}.>"
        )

    async def list(self, limit: int | None = None) -> AsyncIterator[DeadLetter]:
        """Parked messages, oldest first."""
        seq, count = 1, 0
        while limit is None or count < limit:
            try:
                raw = await self._js.get_msg(
                    self._stream, seq, subject=self._subject, next=True
                )
            except NotFoundError:
                return
            if raw.seq is None:
                raise RuntimeError("a stored JetStream message has a sequence number")
            yield self._letter(raw)
            count += 1
            seq = raw.seq + 1

    async def get(self, seq: int) -> DeadLetter:
        try:
            raw = await self._js.get_msg(self._stream, seq)
        except NotFoundError:
            raise DeadLetterNotFound(seq) from None
        letter = self._letter(raw)
        if not _matches(raw.subject or "", self._subject):
            raise DeadLetterNotFound(seq)
        return letter

    async def replay(self, seq: int) -> DeadLetter:
        """Publish the parked message on its original subject again, then drop it from here."""
        letter = await self.get(seq)
        headers = {
            k: v
            for k, v in letter.headers.items()
            if k not in _PARKING_HEADERS and not k.startswith("Nats-")
        }
        # JetStream de-duplicates a repeated replay of the same parked message.
        headers["Nats-Msg-Id"] = f"replay-{self._stream}-{seq}"
        headers["X-Replayed-From"] = str(seq)
        await self._js.publish(letter.original_subject, letter.data, headers=headers)
        await self._delete(seq)
        return letter

    async def purge(self, seq: int) -> DeadLetter:
        letter = await self.get(seq)
        await self._delete(seq)
        return letter

    async def _delete(self, seq: int) -> None:
        with contextlib.suppress(NotFoundError):  # someone else replayed or purged it
            await self._js.delete_msg(self._stream, seq)

    def _letter(self, raw: object) -> DeadLetter:
        headers = {
            str(k): str(v) for k, v in (getattr(raw, "headers", None) or {}).items()
        }
        subject = str(getattr(raw, "subject", "") or "")
        prefix = f"{self._topology.namespace}.{DEAD_LETTER}."
        return DeadLetter(
            seq=int(getattr(raw, "seq", 0) or 0),
            service=subject.removeprefix(prefix),
            original_subject=headers.get("X-Original-Subject", ""),
            error=headers.get("X-Error", ""),
            delivered=int(headers.get("X-Delivered", "0") or 0),
            parked_at=getattr(raw, "time", None),
            headers=headers,
            data=bytes(getattr(raw, "data", None) or b""),
        )


def _matches(subject: str, pattern: str) -> bool:
    if pattern.endswith(".>"):
        return subject.startswith(pattern[:-1])
    return subject == pattern
