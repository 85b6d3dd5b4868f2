"""`Actor`: who is calling. A plain value, so the service layer needs no web framework."""

from __future__ import annotations

import uuid
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is calling, and the request id the audit log records."""

    user_id: int
    request_id: str
    session_id: uuid.UUID | None = None  # the sign-in session of the access token
