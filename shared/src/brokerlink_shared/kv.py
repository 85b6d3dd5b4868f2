"""Compare-and-set on NATS KV that survives a replicated bucket losing a node.

nats-py's `KeyValue.create` answers a refused create (the key exists) by reading the key back, to
tell a deleted key (which it then re-creates) from a live one. On an R3 bucket that read can be
served by a replica that has not applied the key yet, and then `create` raises `KeyNotFoundError`
although the write was simply refused. Every caller wants the same answer in both cases: someone
else holds the key, read it again and decide.
"""

from __future__ import annotations

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue


async def create_if_absent(kv: KeyValue, key: str, value: bytes) -> int | None:
    """Create `key` unless it exists: its revision, or None when another writer got there."""
    try:
        return await kv.create(key, value)
    except (KeyWrongLastSequenceError, KeyNotFoundError):
        return None
