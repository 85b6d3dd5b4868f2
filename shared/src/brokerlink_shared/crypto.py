"""Field encryption on cryptography's MultiFernet: explicit encrypt/decrypt calls, key rotation."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class SecretDecryptionError(Exception):
    """A ciphertext could not be decrypted with any configured key."""

    def __init__(self) -> None:
        super().__init__(
            "stored secret could not be decrypted with the configured keys"
        )


class EncryptionKeyError(ValueError):
    """The configured key list is empty or malformed."""


def generate_key() -> str:
    """Return a new url-safe base64 Fernet key."""
    return Fernet.generate_key().decode()


def parse_keys(raw: str) -> list[str]:
    """Split a comma-separated key list, dropping blanks."""
    return [k.strip() for k in raw.split(",") if k.strip()]


class SecretBox:
    """Encrypts with the first key; decrypts with any; `rotate` re-encrypts under the first key."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise EncryptionKeyError(
                "BROKERLINK_ENCRYPTION_KEYS is empty: set at least one Fernet key"
            )
        try:
            self._fernet = MultiFernet([Fernet(k.encode()) for k in keys])
        except (ValueError, TypeError) as exc:
            raise EncryptionKeyError(
                "BROKERLINK_ENCRYPTION_KEYS holds a malformed key"
            ) from exc

    @classmethod
    def from_setting(cls, raw: str) -> SecretBox:
        """Build from the comma-separated setting value."""
        return cls(parse_keys(raw))

    def encrypt(self, plaintext: str) -> str:
        """Encrypt a string; returns a Fernet token."""
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        """Decrypt a Fernet token produced under any configured key."""
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            raise SecretDecryptionError() from None

    def rotate(self, ciphertext: str) -> str:
        """Re-encrypt a token under the primary key (no-op in meaning, new ciphertext)."""
        try:
            return self._fernet.rotate(ciphertext.encode()).decode()
        except InvalidToken:
            raise SecretDecryptionError() from None
