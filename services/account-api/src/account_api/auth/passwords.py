"""Password hashing: argon2id for new hashes; legacy bcrypt (`$2a$`/`$2b$`/`$2y$`) still verifies
and is upgraded to argon2id at the next successful login.

Hashing costs tens of milliseconds of CPU: the `*_async` forms run it on a small dedicated
thread pool (argon2 and bcrypt release the GIL), so logins never stall the event loop and a
burst of them queues there instead of starving other requests."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

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


_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="password-hash")


async def hash_password_async(password: str) -> str:
    return await asyncio.get_running_loop().run_in_executor(
        _POOL, hash_password, password
    )


async def verify_password_async(stored_hash: str, password: str) -> tuple[bool, bool]:
    return await asyncio.get_running_loop().run_in_executor(
        _POOL, verify_password, stored_hash, password
    )
