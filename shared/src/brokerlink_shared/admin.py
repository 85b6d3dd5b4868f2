"""`brokerlink-admin`: operator commands that act on the bus.

    brokerlink-admin dead-letters list [--service S] [--limit N]
    brokerlink-admin dead-letters show SEQ
    brokerlink-admin dead-letters replay (SEQ... | --all) [--service S]
    brokerlink-admin dead-letters purge (SEQ... | --all) [--service S]

NATS_URL and BROKERLINK_NAMESPACE say which bus and namespace, as for every service.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import nats
import orjson

from brokerlink_shared.dead_letters import (
    DeadLetter,
    DeadLetterNotFound,
    DeadLetterStream,
)
from brokerlink_shared.settings import ServiceSettings
from brokerlink_shared.subjects import Topology


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")


def _err(line: str) -> None:
    sys.stderr.write(line + "\n")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brokerlink-admin", description=__doc__)
    groups = parser.add_subparsers(dest="group", required=True)
    dead = groups.add_parser(
        "dead-letters", help="inspect, replay or purge parked messages"
    )
    actions = dead.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="parked messages, oldest first")
    listing.add_argument("--service", help="only this service's dead letters")
    listing.add_argument("--limit", type=int, default=None)
    show = actions.add_parser("show", help="one parked message: headers and body")
    show.add_argument("seq", type=int)
    for name, what in (
        ("replay", "publish again on the original subject, then remove"),
        ("purge", "remove without replaying"),
    ):
        action = actions.add_parser(name, help=what)
        action.add_argument("seq", type=int, nargs="*")
        action.add_argument("--all", action="store_true", help="every parked message")
        action.add_argument("--service", help="with --all: only this service's")
    return parser


def _line(letter: DeadLetter) -> str:
    parked = letter.parked_at.isoformat(timespec="seconds") if letter.parked_at else "-"
    return (
        f"{letter.seq}\t{letter.service}\t{letter.original_subject}\t"
        f"delivered={letter.delivered}\t{parked}\t{letter.error[:120]}"
    )


def _show(letter: DeadLetter) -> str:
    try:
        body: object = orjson.loads(letter.data)
    except orjson.JSONDecodeError:
        body = letter.data.decode(errors="replace")
    return orjson.dumps(
        {
            "seq": letter.seq,
            "service": letter.service,
            "original_subject": letter.original_subject,
            "delivered": letter.delivered,
            "parked_at": letter.parked_at.isoformat() if letter.parked_at else None,
            "error": letter.error,
            "headers": letter.headers,
            "body": body,
        },
        option=orjson.OPT_INDENT_2,
    ).decode()


async def _dead_letters(args: argparse.Namespace, settings: ServiceSettings) -> int:
    topology = Topology(settings.namespace)
    servers = [u.strip() for u in settings.nats_url.split(",") if u.strip()]
    nc = await nats.connect(servers, connect_timeout=5, max_reconnect_attempts=2)
    try:
        stream = DeadLetterStream(
            nc.jetstream(timeout=10), topology, getattr(args, "service", None)
        )
        if args.action == "list":
            async for letter in stream.list(args.limit):
                _out(_line(letter))
            return 0
        if args.action == "show":
            _out(_show(await stream.get(args.seq)))
            return 0
        if args.all == bool(args.seq):
            _err(f"brokerlink-admin: give sequence numbers or --all to {args.action}")
            return 2
        seqs = args.seq or [letter.seq async for letter in stream.list()]
        act = stream.replay if args.action == "replay" else stream.purge
        done = {"replay": "replayed", "purge": "purged"}[args.action]
        for seq in seqs:
            letter = await act(seq)
            _out(f"{done} {letter.seq} ({letter.original_subject})")
        _out(f"{len(seqs)} message(s) {done}")
        return 0
    finally:
        await nc.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = ServiceSettings()
    try:
        return asyncio.run(_dead_letters(args, settings))
    except DeadLetterNotFound as exc:
        _err(f"brokerlink-admin: no dead letter with sequence {exc.args[0]}")
        return 1
    except (OSError, nats.errors.Error) as exc:
        # not the URL: it may carry credentials
        _err(f"brokerlink-admin: NATS unreachable ({type(exc).__name__})")
        return 1


def run() -> None:
    """Console entry point."""
    sys.exit(main())
