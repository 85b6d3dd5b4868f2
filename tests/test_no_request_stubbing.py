"""Lint: tests never stub our own API in the browser. Browser tests talk to the real account-api,
connectors and simulators; intercepting requests (Playwright's route interception on a page or
context, fulfilled routes, HAR replay) would let a page pass against a shape the API does not send."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
TEST_DIRS = [
    ROOT / "tests",
    *ROOT.glob("services/*/tests"),
    ROOT / "shared" / "tests",
    ROOT / "shared-dev" / "tests",
    ROOT / "simulators" / "tests",
]
# Playwright's interception API on a page, popup or browser context, and its route handlers.
FORBIDDEN = re.compile(
    r"\w*(?:page|popup|context)\w*\.(?:route|unroute|route_from_har)\(|"
    r"\.fulfill\(|\.continue_\(|\.fallback\(|setRequestInterception"
)


def test_no_request_interception_in_tests() -> None:
    # the check can fail (the sample is split so repository-wide greps do not flag this file)
    assert FORBIDDEN.search("await page" + '.route("**/api/**", handler)')
    here = Path(__file__).resolve()
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for folder in TEST_DIRS
        for path in sorted(folder.rglob("*.py"))
        if path.resolve() != here
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if FORBIDDEN.search(line)
    ]
    assert offenders == [], "request interception in tests:\n" + "\n".join(offenders)
