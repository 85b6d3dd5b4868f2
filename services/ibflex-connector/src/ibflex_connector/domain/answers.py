"""What IB's Flex Web Service answers mean.

Both calls answer XML. SendRequest: `<FlexStatementResponse>` with `Status` Success (a
`ReferenceCode` and the `Url` to fetch it from) or Fail (`ErrorCode`, `ErrorMessage`). GetStatement:
the `<FlexQueryResponse>` report, or a `<FlexStatementResponse>` error such as 1019 "generation in
progress". The codes are IB's (the ibflex client lists them all).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from enum import StrEnum


class Verdict(StrEnum):
    """What to do about an answer."""

    READY = "ready"  # a reference code (SendRequest) or the report (GetStatement)
    NOT_READY = "not_ready"  # ask again shortly, same reference code
    THROTTLED = "throttled"  # too many requests from this token: back off
    REAUTH = "reauth"  # the token is dead: only a new token helps
    QUERY = "query"  # the query id is wrong for this token
    RESTART = (
        "restart"  # the reference code is unknown/stale: start again with SendRequest
    )
    FAILED = "failed"  # anything else: report it


_NOT_READY = frozenset({"1004", "1005", "1006", "1007", "1008", "1009", "1019", "1021"})
_REAUTH = frozenset({"1012", "1015"})
_QUERY = frozenset({"1010", "1014"})

# What the user is told, by IB error code; `{code}` and `{query}` are filled in.
MESSAGES = {
    "1012": "IB says the Flex Web Service token has expired ({code}).",
    "1015": "IB does not accept the Flex Web Service token ({code}).",
    "1011": "IB says the account's Flex Web Service is inactive ({code}): enable it in "
    "Client Portal → Performance & Reports → Flex Queries.",
    "1013": "IB refused the request because the token is restricted to other IP addresses "
    "({code}): allow this server's address in the token's settings or remove the restriction.",
    "1014": "IB does not know Flex Query {query} for this token ({code}): check the Query ID.",
    "1010": "Flex Query {query} is a legacy query IB no longer runs ({code}): create an "
    "Activity Flex Query.",
    "1016": "IB says the account is invalid for this query ({code}).",
    "1018": "IB kept throttling this token ({code}): too many requests; try again later.",
}


@dataclass(frozen=True, slots=True)
class Answer:
    """One Flex Web Service answer, classified."""

    verdict: Verdict
    code: str | None = None
    message: str = ""
    reference_code: str | None = None
    url: str | None = None
    expires_in_days: int | None = None


_EXPIRES = re.compile(r"expir\w*\s+in\s+(\d+)\s+day", re.IGNORECASE)


def expiry_days(text: str) -> int | None:
    """Days until the token expires, when an answer says so ("... expires in 12 days")."""
    match = _EXPIRES.search(text)
    return int(match.group(1)) if match else None


def classify_code(code: str) -> Verdict:
    if code in _NOT_READY:
        return Verdict.NOT_READY
    if code == "1018":
        return Verdict.THROTTLED
    if code in _REAUTH:
        return Verdict.REAUTH
    if code in _QUERY:
        return Verdict.QUERY
    if code == "1017":
        return Verdict.RESTART
    return Verdict.FAILED


def read_answer(body: bytes) -> Answer:
    """Classify an answer of either call (the report itself is READY, parsed elsewhere)."""
    try:
        root = ET.fromstring(body)  # noqa: S314 - expat >= 2.4.1 refuses entity bombs; ElementTree fetches no external entities
    except ET.ParseError:
        return Answer(Verdict.FAILED, message="IB answered something that is not XML")
    if root.tag == "FlexQueryResponse":
        return Answer(Verdict.READY)
    if root.tag != "FlexStatementResponse":
        return Answer(Verdict.FAILED, message=f"unexpected answer from IB <{root.tag}>")
    fields = {child.tag: (child.text or "").strip() for child in root}
    days = expiry_days(" ".join(fields.values()))
    status = fields.get("Status", "")
    if status == "Success" or (status == "Warn" and fields.get("ReferenceCode")):
        if not fields.get("ReferenceCode"):
            return Answer(
                Verdict.FAILED, message="IB answered Success without a reference code"
            )
        return Answer(
            Verdict.READY,
            reference_code=fields["ReferenceCode"],
            url=fields.get("Url") or None,
            expires_in_days=days,
        )
    code = fields.get("ErrorCode") or "unknown"
    return Answer(
        classify_code(code),
        code=code,
        message=fields.get("ErrorMessage") or "IB reported an error",
        expires_in_days=days,
    )


def user_message(code: str | None, ib_message: str, query_id: str) -> str:
    """A message fit for the integration's status: ours when we know the code, else IB's."""
    template = MESSAGES.get(code or "")
    if template is None:
        return f"IB Flex Web Service error {code}: {ib_message}" if code else ib_message
    return template.format(code=code, query=query_id)
