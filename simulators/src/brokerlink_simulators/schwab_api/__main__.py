"""`schwab-api-sim --scenario PATH --host 127.0.0.1 --port N [--tls-cert C --tls-key K]`: prints
`{"base_url": ...}` once ready."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

import orjson

from brokerlink_simulators.schwab_api.server import SchwabApiSimulator


async def _serve(
    scenario: str | None, host: str, port: int, tls: tuple[str, str] | None
) -> None:
    sim = SchwabApiSimulator(scenario, host=host, port=port, tls=tls)
    await sim.start()
    sys.stdout.write(orjson.dumps({"base_url": sim.base_url}).decode() + "\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sim.stop()


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    parser = argparse.ArgumentParser(
        prog="schwab-api-sim", description="Schwab Trader API simulator"
    )
    parser.add_argument("--scenario", help="scenario JSON file (default: empty world)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--tls-cert", help="serve https with this certificate (PEM)")
    parser.add_argument("--tls-key", help="the certificate's private key (PEM)")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
    asyncio.run(_serve(args.scenario, args.host, args.port, tls))


if __name__ == "__main__":
    main()
