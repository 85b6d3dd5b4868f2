"""`ib-gateway-sim`: run the IB Gateway simulator until SIGINT/SIGTERM.

When ready it prints one JSON line to stdout: `{"admin_url": ..., "gateways": {name: port}}`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import orjson

from brokerlink_simulators.ib_gateway.scenario import Scenario
from brokerlink_simulators.ib_gateway.simulator import IBGatewaySimulator


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ib-gateway-sim", description=__doc__)
    parser.add_argument("--scenario", help="scenario JSON file (default: no gateways)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--admin-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--gateway-port",
        action="append",
        default=[],
        metavar="NAME=PORT",
        help="listen for gateway NAME on PORT (overrides the scenario; repeatable)",
    )
    parser.add_argument("--log-level", default="WARNING")
    return parser.parse_args(argv)


def _name_port(item: str) -> tuple[str, int]:
    name, sep, port = item.partition("=")
    if not sep or not port.isdigit():
        raise SystemExit(
            f"ib-gateway-sim: --gateway-port wants NAME=PORT, got {item!r}"
        )
    return name, int(port)


async def _serve(args: argparse.Namespace) -> None:
    scenario = Scenario.load(args.scenario) if args.scenario else Scenario()
    ports = dict(_name_port(item) for item in args.gateway_port)
    for gateway in scenario.gateways:
        gateway.port = ports.get(gateway.name, gateway.port)
    sim = IBGatewaySimulator(scenario, host=args.host, admin_port=args.admin_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await sim.start()
    try:
        line = orjson.dumps({"admin_url": sim.admin_url, "gateways": sim.ports()})
        sys.stdout.write(line.decode() + "\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    args = _parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is optional
        pass
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
