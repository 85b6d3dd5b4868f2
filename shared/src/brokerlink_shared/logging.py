"""One logging setup for every service: JSON lines on stderr with secret redaction."""

from __future__ import annotations

import contextvars
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "correlation_id", default=None
)

SECRET_KEYS = re.compile(
    r"(secret|token|password|passwd|authorization|api[_-]?key|app[_-]?key|totp|fernet|cookie|code_verifier|code_enc)",
    re.IGNORECASE,
)
# key=value / "key": "value" pairs whose key names a secret, and bearer credentials.
_PAIR = re.compile(
    r"""(?P<key>\\?["']?[\w-]*(?:secret|token|password|authorization|api_key|app_key|totp)[\w-]*\\?["']?\s*[:=]\s*)(?P<val>\\?"(?:[^"\\]|\\[^"])*\\?"|'[^']*'|[^\s,;&}]+)""",
    re.IGNORECASE,
)
# OAuth authorization codes: `?code=…` in URLs and a quoted "code" key in JSON.
_CODE = re.compile(
    r"""(?P<key>[?&]code=)(?P<val>[^\s&#"']+)|(?P<jkey>["']code["']\s*:\s*)(?P<jval>"[^"]*"|'[^']*')"""
)
_BEARER = re.compile(r"(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_FERNET = re.compile(r"gAAAAA[A-Za-z0-9_=-]{20,}")
REDACTED = "***"


def redact_text(text: str) -> str:
    """Mask secret-looking values in free text (key=value pairs, bearer tokens, ciphertexts)."""
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _PAIR.sub(lambda m: f"{m.group('key')}{REDACTED}", text)
    text = _CODE.sub(lambda m: f"{m.group('key') or m.group('jkey')}{REDACTED}", text)
    return _FERNET.sub(REDACTED, text)


def redact(value: Any) -> Any:
    """Recursively mask values stored under secret-looking keys."""
    if isinstance(value, dict):
        return {
            k: (
                REDACTED
                if isinstance(k, str) and SECRET_KEYS.search(k) and v
                else redact(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON object; extra fields and messages pass through redaction."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": redact_text(record.getMessage()),
        }
        if cid := correlation_id.get():
            entry["correlation_id"] = cid
        for key, val in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = REDACTED if SECRET_KEYS.search(key) else redact(val)
        if record.exc_info:
            entry["exc"] = redact_text(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=str).decode()


def configure_logging(service: str, level: str = "INFO") -> None:
    """Install the JSON formatter on the root logger (idempotent) and quieten chatty libraries."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in (
        "faststream",
        "nats",
        "ib_async",
        "httpx",
        "httpcore",
        "uvicorn.access",
    ):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # uvicorn installs its own handlers; route them through ours.
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
