"""`ibflex-sim --scenario PATH --host 127.0.0.1 --port N`: prints `{"base_url": ...}` once ready."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

import orjson

from brokerlink_simulators.ib_flex.server import IbFlexSimulator


async def _serve(scenario: str | None, host: str, port: int) -> None:
    sim = IbFlexSimulator(scenario, host=host, port=port)
    await sim.start()
    sys.stdout.write(
        orjson.dumps(
            {"base_url": sim.base_url, "send_request_url": sim.send_request_url}
        ).decode()
        + "\n"
    )
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
        prog="ibflex-sim", description="IB Flex Web Service simulator"
    )
    parser.add_argument("--scenario", help="scenario JSON file (default: empty world)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.scenario, args.host, args.port))


if __name__ == "__main__":
    main()
