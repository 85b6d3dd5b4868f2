"""The UI's words (ui/static/words.js), table-driven, run under node from pytest.

The formatter lives in JavaScript because it runs in the browser, where relative times tick
every second; testing that very file (not a Python copy) keeps one source of truth. Node comes
with Playwright's driver (a dev dependency), so nothing extra is installed; a system `node` is
used when present.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

WORDS = Path(__file__).parents[1] / "src" / "account_api" / "ui" / "static" / "words.js"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _ago(**delta: float) -> str:
    return (NOW - timedelta(**delta)).isoformat()


def node() -> str:
    found = shutil.which("node")
    if found:
        return found
    from playwright._impl._driver import compute_driver_executable

    return str(compute_driver_executable()[0])


RUNNER = """
const source = Buffer.from(process.argv[1], "base64").toString();
const words = await import("data:text/javascript;base64," + Buffer.from(source).toString("base64"));
let input = "";
for await (const chunk of process.stdin) input += chunk;
const { now, calls } = JSON.parse(input);
const out = calls.map(([fn, args]) => {
  if (fn === "syncSummary") {
    const s = words.syncSummary(...args, now);
    return { key: s.key, label: s.label, text: words.partsText(s.line, now) };
  }
  return words[fn](...args);
});
process.stdout.write(JSON.stringify(out));
"""


def run_words(calls: list[tuple[str, list[Any]]]) -> list[Any]:
    """Call words.js functions under node; one process for a whole table."""
    source = base64.b64encode(WORDS.read_bytes()).decode()
    done = subprocess.run(
        [node(), "--input-type=module", "-e", RUNNER, source],
        input=json.dumps({"now": NOW.timestamp() * 1000, "calls": calls}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def sync(
    status: str,
    attempt: str | None = None,
    success: str | None = None,
    failure: str | None = None,
    asked: str | None = None,
    signed_in: bool | None = None,
) -> dict[str, Any]:
    return {
        "status": status,
        "last_attempt": attempt,
        "last_success_at": success,
        "last_failure_at": failure,
        "last_attempt_at": asked,
        "last_error": None,
        "last_error_code": None,
        "signed_in": signed_in,
    }


# (kind, sync facts) -> (badge key, badge label, sync line)
SUMMARIES: list[tuple[str, str | None, dict[str, Any] | None, tuple[str, str, str]]] = [
    ("manual account", None, None, ("not_configured", "No integration", "")),
    (
        "saved, first refresh running",
        "IB",
        sync("pending", "pending", asked=_ago(seconds=5)),
        ("pending", "Syncing", "Fetching the first balance…"),
    ),
    (
        "connected, never synced, nothing asked",
        "IB",
        sync("connected"),
        ("pending", "Connected, no balance yet", "Never synced"),
    ),
    (
        "pending, nothing asked",
        "IB",
        sync("pending"),
        ("pending", "Setting up", "Never synced"),
    ),
    (
        "connected and synced",
        "IB",
        sync("connected", "succeeded", success=_ago(minutes=2), asked=_ago(minutes=2)),
        ("connected", "Connected", "Synced 2 mins ago"),
    ),
    (
        "connected, newest attempt failed, good sync earlier",
        "IB",
        sync(
            "connected",
            "failed",
            success=_ago(hours=3),
            failure=_ago(minutes=1),
            asked=_ago(minutes=1),
        ),
        (
            "error",
            "Sync failing",
            "Last sync failed 1 min ago · last good sync 3 hours ago",
        ),
    ),
    (
        "pending, first attempt failed",
        "IB",
        sync("pending", "failed", failure=_ago(seconds=10), asked=_ago(seconds=12)),
        ("error", "Sync failing", "Last sync failed just now · no balance yet"),
    ),
    (
        "refreshing again after a good sync",
        "IB",
        sync("connected", "pending", success=_ago(days=1), asked=_ago(seconds=3)),
        ("connected", "Connected", "Syncing now · last good sync 1 day ago"),
    ),
    (
        "asked long ago, no answer",
        "IB",
        sync("connected", "pending", success=_ago(days=2), asked=_ago(minutes=10)),
        (
            "connected",
            "Connected",
            "No answer yet to the sync asked 10 mins ago · last good sync 2 days ago",
        ),
    ),
    (
        "asked long ago, never synced",
        "IB",
        sync("pending", "pending", asked=_ago(minutes=5)),
        (
            "pending",
            "Syncing",
            "No answer yet to the sync asked 5 mins ago · no balance yet",
        ),
    ),
    (
        "gateway down after a good sync",
        "IB",
        sync("disconnected", "succeeded", success=_ago(minutes=30)),
        ("disconnected", "Disconnected", "Synced 30 mins ago"),
    ),
    (
        "gateway down, never synced",
        "IB",
        sync("disconnected"),
        ("disconnected", "Disconnected", "Never synced"),
    ),
    (
        "error status, failed attempt",
        "IB",
        sync("error", "failed", failure=_ago(minutes=4), asked=_ago(minutes=4)),
        ("error", "Error", "Last sync failed 4 mins ago · no balance yet"),
    ),
    (
        "Schwab saved, not signed in",
        "SCHWAB",
        sync("pending", signed_in=False),
        ("reauth_required", "Not signed in", "Never synced"),
    ),
    (
        "Schwab reauth required, never signed in",
        "SCHWAB",
        sync("reauth_required", signed_in=False),
        ("reauth_required", "Not signed in", "Never synced"),
    ),
    (
        "Schwab sign-in expired after syncing",
        "SCHWAB",
        sync(
            "reauth_required",
            "failed",
            success=_ago(days=8),
            failure=_ago(hours=1),
            asked=_ago(hours=1),
            signed_in=True,
        ),
        (
            "reauth_required",
            "Sign-in expired",
            "Last sync failed 1 hour ago · last good sync 8 days ago",
        ),
    ),
    (
        "Schwab signed in, first refresh running",
        "SCHWAB",
        sync("connected", "pending", asked=_ago(seconds=1), signed_in=True),
        ("pending", "Syncing", "Fetching the first balance…"),
    ),
    (
        "Schwab expiring soon",
        "SCHWAB",
        sync("expiring_soon", "succeeded", success=_ago(hours=2), signed_in=True),
        ("expiring_soon", "Sign-in expires soon", "Synced 2 hours ago"),
    ),
    (
        "Schwab expiring soon and failing",
        "SCHWAB",
        sync(
            "expiring_soon",
            "failed",
            success=_ago(hours=2),
            failure=_ago(minutes=1),
            signed_in=True,
        ),
        (
            "error",
            "Sync failing",
            "Last sync failed 1 min ago · last good sync 2 hours ago",
        ),
    ),
]


@pytest.fixture(scope="module")
def summaries() -> list[dict[str, Any]]:
    return run_words(
        [("syncSummary", [kind, facts]) for _, kind, facts, _ in SUMMARIES]
    )


@pytest.mark.parametrize(
    ("index", "case"), list(enumerate(SUMMARIES)), ids=[c[0] for c in SUMMARIES]
)
def test_sync_summary(index: int, case: tuple, summaries: list[dict[str, Any]]) -> None:
    _, _, _, (key, label, text) = case
    assert summaries[index] == {"key": key, "label": label, "text": text}


STATUSES = [
    "connected",
    "pending",
    "disconnected",
    "error",
    "reauth_required",
    "expiring_soon",
]
ATTEMPTS = [None, "pending", "succeeded", "failed"]


def _every_combination() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for kind, status, attempt, synced, signed_in, asked_ago in itertools.product(
        ["IB", "SCHWAB"],
        STATUSES,
        ATTEMPTS,
        [False, True],
        [None, False, True],
        [1, 600],
    ):
        if attempt == "succeeded" and not synced:
            continue  # a succeeded attempt always left a balance
        if (kind == "IB") != (signed_in is None):
            continue
        out.append(
            (
                kind,
                sync(
                    status,
                    attempt,
                    success=_ago(hours=5) if synced else None,
                    failure=_ago(minutes=3) if attempt == "failed" else None,
                    asked=_ago(seconds=asked_ago) if attempt else None,
                    signed_in=signed_in,
                ),
            )
        )
    return out


def test_no_combination_claims_what_did_not_happen() -> None:
    """Every status x attempt x time combination: a sync is never claimed without a balance,
    "Connected" never stands without one, a failure is always said, a good sync stays visible."""
    cases = _every_combination()
    results = run_words([("syncSummary", [kind, facts]) for kind, facts in cases])
    assert len(results) == len(cases) > 100
    for (kind, facts), out in zip(cases, results, strict=True):
        text, label = out["text"], out["label"]
        where = f"{kind} {facts} -> {out}"
        if not facts["last_success_at"]:
            assert "Synced" not in text and "last good sync" not in text, where
            assert label != "Connected", where
            assert out["key"] != "connected", where
        else:
            assert "Never synced" not in text and "no balance yet" not in text, where
        if facts["last_attempt"] == "failed":
            assert text.startswith("Last sync failed"), where
            assert out["key"] in ("error", "reauth_required", "disconnected"), where
            if facts["last_success_at"]:
                assert "last good sync 5 hours ago" in text, where
        if facts["signed_in"] is False:
            assert out["key"] in ("reauth_required", "disconnected", "error"), where
        if label == "Sign-in expired":
            assert facts["signed_in"] is not False, where


ERRORS = [
    (
        [
            "502",
            "connection refused by gw:4001",
            {"kind": "IB", "host": "gw", "port": 4001},
        ],
        "IB Gateway refused the connection on 4001 — is it running with the API enabled?",
    ),
    (
        [
            "unreachable",
            "no IB Gateway answered",
            {"kind": "IB", "host": "gw", "port": 4001},
        ],
        "No IB Gateway answered at gw:4001 — check the host and port, that IB Gateway is running and that its API is enabled.",
    ),
    (
        ["326", "client id in use", {"kind": "IB", "client_id": 7}],
        "Client ID 7 is already in use on this gateway — choose another client ID.",
    ),
    (
        ["timeout", "no answer", {"kind": "IB", "host": "gw", "port": 4002}],
        "IB Gateway at gw:4002 did not answer in time — check the host and port, and that the API is enabled.",
    ),
    (
        ["timeout", "no answer", {"kind": "SCHWAB"}],
        "Schwab did not answer in time — try again in a minute.",
    ),
    (
        ["reauth_required", "refresh token expired", {"kind": "SCHWAB"}],
        "Your Schwab sign-in has expired — use Re-authenticate to sign in again.",
    ),
    (
        ["http_503", "Service Unavailable", {"kind": "SCHWAB"}],
        "Schwab's service is having trouble — try again later.",
    ),
    (
        ["no_connector", "no IB connector answered", {"kind": "IB"}],
        "No IB connector answered — is brokerlink's IB connector running?",
    ),
    (
        ["zz_new_code", "the gateway said something new", {"kind": "IB"}],
        "The gateway said something new.",
    ),
]


def test_broker_errors_are_sentences_with_what_to_do() -> None:
    out = run_words([("brokerErrorText", args) for args, _ in ERRORS])
    assert out == [text for _, text in ERRORS]


FIELD_ERRORS = [
    (
        {"type": "string_too_short", "loc": ["body", "name"], "ctx": {"min_length": 1}},
        "Can't be empty.",
    ),
    (
        {"type": "too_short", "loc": ["body", "password"], "ctx": {"min_length": 8}},
        "Use at least 8 characters.",
    ),
    (
        {
            "type": "less_than_equal",
            "loc": ["body", "config", "port"],
            "ctx": {"le": 65535},
        },
        "Must be 65535 or less.",
    ),
    (
        {
            "type": "greater_than_equal",
            "loc": ["body", "config", "port"],
            "ctx": {"ge": 1},
        },
        "Must be 1 or more.",
    ),
    (
        {"type": "int_parsing", "loc": ["body", "config", "client_id"]},
        "Enter a whole number.",
    ),
    (
        {
            "type": "too_long",
            "loc": ["body", "config", "backups"],
            "ctx": {"max_length": 8},
        },
        "At most 8 backup gateways.",
    ),
    (
        {"type": "string_pattern_mismatch", "loc": ["body", "config", "account_code"]},
        "Use an IB account code like U1234567.",
    ),
    (
        {
            "type": "value_error",
            "loc": ["body", "config", "host"],
            "msg": "Value error, host must be a name or an IP address",
        },
        "Host must be a name or an IP address.",
    ),
    ({"type": "missing", "loc": ["body", "config", "host"]}, "Required."),
    # no `ctx` (our 422s drop it with the input): the limit is read from pydantic's message
    (
        {
            "type": "too_short",
            "loc": ["body", "password"],
            "msg": "Value should have at least 8 items after validation, not 5",
        },
        "Use at least 8 characters.",
    ),
    (
        {
            "type": "less_than_equal",
            "loc": ["body", "config", "port"],
            "msg": "Input should be less than or equal to 65535",
        },
        "Must be 65535 or less.",
    ),
    (
        {
            "type": "greater_than",
            "loc": ["body", "config", "client_id"],
            "msg": "Input should be greater than -1",
        },
        "Must be more than -1.",
    ),
    # nothing to read either: still words, never "undefined"
    ({"type": "less_than_equal", "loc": ["body", "config", "port"]}, "Too large."),
    ({"type": "too_short", "loc": ["body", "password"]}, "Too short."),
]


def test_field_errors_in_plain_words() -> None:
    out = run_words([("fieldErrorText", [item]) for item, _ in FIELD_ERRORS])
    assert out == [text for _, text in FIELD_ERRORS]


def test_accounts_without_integration_never_claim_a_sync() -> None:
    out = run_words([("manualLine", [_ago(days=3)]), ("manualLine", [None])])
    assert out == [["Balance updated ", {"time": _ago(days=3)}], ["—"]]


def test_api_errors_in_plain_words() -> None:
    out = run_words(
        [
            (
                "apiErrorText",
                [404, {"detail": "account not found", "code": "not_found"}],
            ),
            ("apiErrorText", [500, {"detail": "boom"}]),
            (
                "apiErrorText",
                [
                    409,
                    {
                        "detail": "OAuth applies to Schwab integrations",
                        "code": "conflict",
                    },
                ],
            ),
        ]
    )
    assert out == [
        "This account no longer exists — reload the page.",
        "Something went wrong on the server — try again; if it keeps happening, check the server logs.",
        "OAuth applies to Schwab integrations.",
    ]
