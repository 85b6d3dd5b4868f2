"""Password hashing: argon2id for new hashes; legacy bcrypt (`$2a$`/`$2b$`/`$2y$`) still verifies
and is upgraded to argon2id at the next successful login."""

from __future__ import annotations

import bcrypt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str, password: str) -> tuple[bool, bool]:
    """Return (matches, needs_rehash)."""
    if stored_hash.startswith(BCRYPT_PREFIXES):
        try:
            ok = bcrypt.checkpw(password.encode()[:72], stored_hash.encode())
        except ValueError:
            return False, False
        return ok, ok
    try:
        _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False, False
    return True, _hasher.check_needs_rehash(stored_hash)


# A real hash to verify against when the user does not exist, so timing does not reveal it.
DUMMY_HASH = hash_password("no-such-user-timing-equaliser")
