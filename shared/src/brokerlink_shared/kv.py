"""NATS KV the way nats-py gets it wrong under races: compare-and-set that survives a replicated
bucket losing a node, and a listing of a bucket's keys that does not end early.

nats-py's `KeyValue.create` answers a refused create (the key exists) by reading the key back, to
tell a deleted key (which it then re-creates) from a live one. On an R3 bucket that read can be
served by a replica that has not applied the key yet, and then `create` raises `KeyNotFoundError`
although the write was simply refused. Every caller wants the same answer in both cases: someone
else holds the key, read it again and decide.
"""

from __future__ import annotations

import orjson
from nats.aio.client import Client as NatsClient
from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue


async def create_if_absent(kv: KeyValue, key: str, value: bytes) -> int | None:
    """Create `key` unless it exists: its revision, or None when another writer got there."""
    try:
        return await kv.create(key, value)
    except (KeyWrongLastSequenceError, KeyNotFoundError):
        return None


async def live_entry(kv: KeyValue, key: str) -> tuple[bytes, int] | None:
    """A key's value and revision, or None when it is absent or deleted (a delete leaves a
    marker that `get` may return)."""
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return None
    if entry.value is None or entry.operation in ("DEL", "PURGE"):
        return None
    return entry.value, int(entry.revision or 0)


# JetStream's "wrong last sequence" (JSStreamWrongLastSequenceErrF)
_WRONG_LAST_SEQUENCE = 10071


async def delete_if_unchanged(kv: KeyValue, key: str, revision: int) -> bool:
    """Delete `key` if it is still at `revision`: False when another writer changed it first.

    nats-py turns that refusal into `KeyWrongLastSequenceError` for `update` but not for
    `delete`, which raises a bare `BadRequestError`."""
    try:
        await kv.delete(key, last=revision)
    except BadRequestError as exc:
        if exc.err_code != _WRONG_LAST_SEQUENCE:
            raise
        return False
    return True


# The server sends a stream's subjects in pages of up to 100,000 (JSMaxSubjectDetails).
_STREAM_INFO = "$JS.API.STREAM.INFO.KV_{bucket}"


async def bucket_keys(nc: NatsClient, bucket: str, timeout_s: float = 5.0) -> list[str]:
    """Every key of `bucket` with a message in the bucket: live ones and deleted ones (a delete
    leaves a marker until the bucket's max age); callers read each key for its state.

    Read from the stream's subject index rather than `KeyValue.keys()`: that one replays the
    bucket through a watcher whose end-of-replay marker can come before messages still in
    flight, so it lists nothing (`NoKeysError`) or only part of the keys while they exist
    (nats-io/nats.py#842, its fix pending in #995). A claim missed that way is never released.
    """
    prefix = f"$KV.{bucket}."
    keys: list[str] = []
    while True:
        request = {"subjects_filter": f"{prefix}>", "offset": len(keys)}
        reply = await nc.request(
            _STREAM_INFO.format(bucket=bucket), orjson.dumps(request), timeout=timeout_s
        )
        answer = orjson.loads(reply.data)
        if "error" in answer:
            raise BucketListingFailed(answer["error"].get("description", "unknown"))
        page = list((answer.get("state") or {}).get("subjects") or {})
        keys += [subject[len(prefix) :] for subject in page]
        if not page or len(keys) >= int(answer.get("total") or 0):
            return keys


class BucketListingFailed(Exception):
    """The server refused to list a bucket's keys (its description, never a key or value)."""
