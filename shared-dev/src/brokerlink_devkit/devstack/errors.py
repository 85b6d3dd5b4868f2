"""The one error `make run` reports: what failed and what to do about it, never a traceback."""

from __future__ import annotations


class StartupError(Exception):
    """A start-up failure the supervisor explains: `what` failed, `advice` says what to do,
    `details` (e.g. a child's last log lines) shows why."""

    def __init__(
        self, what: str, advice: str, details: list[str] | None = None
    ) -> None:
        super().__init__(what)
        self.what = what
        self.advice = advice
        self.details = details or []
