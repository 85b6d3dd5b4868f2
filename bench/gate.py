"""The bench gate behind `make bench` (not a test: timings do not belong in `make test`).

Runs every bench in its short mode (under 5 minutes in all on 2 cores), compares each figure
with `bench/budgets.json` and prints one table. A figure fails when it is more than 25 % worse
than its budget (`"better": "higher"` figures below 0.75x, `"lower"` figures above 1.25x;
`"exact"` figures must not exceed the budget at all, e.g. refreshes never answered). Budgets are
ratios where the run has its own reference (the migration's rerun against its first run, the
refreshes achieved against those offered) and absolute figures with generous margins
otherwise; the side-by-side ratios against the legacy app come from `bench/vs_legacy.sh`.

    uv run python bench/gate.py [--only api,ib_refresh] [--json results.json]

Exit status: 0 when every figure is within its budget, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TOLERANCE = 0.25


@dataclass(frozen=True)
class Bench:
    name: str
    args: list[str]
    parse: Callable[[str, Path], dict[str, float]]


def _from_json(keys: dict[str, str]) -> Callable[[str, Path], dict[str, float]]:
    """Figures from the bench's --json file; `keys` maps figure -> dotted path."""

    def parse(_out: str, json_path: Path) -> dict[str, float]:
        data = json.loads(json_path.read_text())
        figures: dict[str, float] = {}
        for name, dotted in keys.items():
            value: Any = data
            for part in dotted.split("."):
                value = value[part]
            figures[name] = float(value)
        return figures

    return parse


def _ib_refresh(out: str, json_path: Path) -> dict[str, float]:
    figures = _from_json(
        {
            "paced_p99_ms": "p99_ms",
            "unanswered": "unanswered",
            "connector_rss_mib": "connector_rss_sessions_open_mib",
        }
    )(out, json_path)
    data = json.loads(json_path.read_text())
    figures["achieved_over_offered"] = data["achieved_per_s"] / data["rate_offered"]
    return figures


def _migrate(out: str, _json_path: Path) -> dict[str, float]:
    first = re.search(r"first run:\s+exit (\d+), ([\d.]+) s, peak RSS ([\d.]+) MB", out)
    second = re.search(r"second run:\s+exit (\d+), ([\d.]+) s", out)
    if not first or not second:
        raise ValueError("no 'first run' / 'second run' lines")
    return {
        "exit_codes": float(int(first[1]) + int(second[1])),
        "first_run_s": float(first[2]),
        "rerun_over_first": float(second[2]) / float(first[2]),
        "peak_rss_mb": float(first[3]),
    }


def _schwab(out: str, _json_path: Path) -> dict[str, float]:
    rate = re.search(r"refreshes/s: ([\d.]+)", out)
    p99 = re.search(r"p99 ([\d.]+) ms", out)
    calls = re.search(r"API calls per cycle: \[([\d, ]+)\]\s+\(expected (\d+)", out)
    too_many = re.search(r"429 answers: (\d+)", out)
    if not (rate and p99 and calls and too_many):
        raise ValueError("unexpected output")
    per_cycle = [int(c) for c in calls[1].split(",")]
    return {
        "refreshes_per_s": float(rate[1]),
        "p99_ms": float(p99[1]),
        "extra_calls": float(sum(max(0, c - int(calls[2])) for c in per_cycle)),
        "answers_429": float(too_many[1]),
    }


BENCHES = [
    Bench(
        "ib_refresh",
        [
            "ib_refresh.py",
            *("--accounts", "500", "--gateways", "25"),
            *("--rate", "500", "--duration", "20", "--drain", "30"),
        ],
        _ib_refresh,
    ),
    Bench(
        "api",
        ["api_bench.py", "--duration", "20", "--warmup", "3"],
        _from_json(
            {
                f"{route}_{figure}": f"routes.{route}.{key}"
                for route in ("list+history", "detail")
                for figure, key in (("req_per_s", "req_per_s"), ("p99_ms", "p99_ms"))
            }
            | {"errors": "routes.detail.non_2xx"}
        ),
    ),
    Bench("migrate", ["migrate_bench.py", "--scale", "0.05"], _migrate),
    Bench(
        "schwab_refresh",
        ["schwab_refresh.py", "--accounts", "200", "--logins", "20", "--cycles", "4"],
        _schwab,
    ),
]


def verdict(value: float, budget: dict[str, Any]) -> tuple[float, bool]:
    """(limit, ok) for one figure."""
    target, better = float(budget["budget"]), budget["better"]
    if better == "higher":
        limit = target * (1 - TOLERANCE)
        return limit, value >= limit
    if better == "lower":
        limit = target * (1 + TOLERANCE)
        return limit, value <= limit
    return target, value <= target  # "exact": a count that must not grow at all


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", help="comma-separated bench names")
    parser.add_argument("--budgets", type=Path, default=HERE / "budgets.json")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    budgets: dict[str, dict[str, dict[str, Any]]] = json.loads(
        args.budgets.read_text()
    )["benches"]
    chosen = [b for b in BENCHES if not args.only or b.name in args.only.split(",")]
    started = time.monotonic()
    rows: list[tuple[str, str, str, str, str, str]] = []
    failed = False
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "benches": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-gate-") as tmp:
        for bench in chosen:
            json_path = Path(tmp) / f"{bench.name}.json"
            cmd = [sys.executable, str(HERE / bench.args[0]), *bench.args[1:]]
            if bench.parse is not _migrate and bench.parse is not _schwab:
                cmd += ["--json", str(json_path)]
            t0 = time.monotonic()
            print(f"== {bench.name}: {' '.join(cmd[1:])}", flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            print(proc.stdout, end="", flush=True)
            try:
                figures = bench.parse(proc.stdout, json_path)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                failed = True
                tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
                print(
                    f"   {bench.name} gave no figures ({exc!r}); exit {proc.returncode}\n{tail}"
                )
                rows.append((bench.name, "(ran)", "no figures", "", "", "FAIL"))
                continue
            results["benches"][bench.name] = figures | {
                "seconds": round(time.monotonic() - t0, 1)
            }
            for name, budget in budgets.get(bench.name, {}).items():
                if name not in figures:
                    failed = True
                    rows.append((bench.name, name, "missing", "", "", "FAIL"))
                    continue
                value = figures[name]
                limit, ok = verdict(value, budget)
                failed |= not ok
                sign = {"higher": ">=", "lower": "<=", "exact": "<="}[budget["better"]]
                rows.append(
                    (
                        bench.name,
                        name,
                        f"{value:,.3g}" if abs(value) < 10 else f"{value:,.0f}",
                        f"{budget['budget']:,}",
                        f"{sign} {limit:,.3g}"
                        if abs(limit) < 10
                        else f"{sign} {limit:,.0f}",
                        "ok" if ok else "FAIL",
                    )
                )
    header = ("bench", "figure", "measured", "budget", "limit (25 %)", "")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(6)]
    print()
    print(
        f"bench gate, {results['date']}, {os.cpu_count()} cores, "
        f"{time.monotonic() - started:.0f} s in all"
    )
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
