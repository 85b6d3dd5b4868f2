"""Who signed in: a Schwab login's identity.

One registered app (app key) can serve several Schwab logins of one user — a couple sharing an
app, each signing in as themselves. Each login has its own tokens, accounts and re-authentication,
so a login is (user, app key, identity). Schwab's token answer does not say who signed in; the set
of accounts the new token sees does, and is what matters to us: the identity is a digest of the
account hashes the login lists (opaque, and no account number travels in it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def login_identity(account_hashes: Iterable[str]) -> str:
    """A stable, non-revealing id for the login that sees these accounts."""
    joined = ",".join(sorted(set(account_hashes)))
    return hashlib.sha256(f"schwab-login:{joined}".encode()).hexdigest()[:32]
