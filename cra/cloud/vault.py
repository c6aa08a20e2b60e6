"""Configuration secrets at rest, sealed like the platform's remoteaccess.encryption.password/salt.

With a password and a hex salt, secrets are sealed with AES-256-GCM under a PBKDF2 key;
without them they are stored as they came (the platform refuses to start; a local cloud
should not). The local cloud never needs them back in clear except to tell, at start, which
configurations were sealed under another password.
"""
import base64
import hashlib
import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SEALED_PREFIX = "aes256gcm:"
PLAIN_PREFIX = "plain:"
KEY_ROUNDS = 200_000


class VaultError(ValueError):
    pass


class Vault:
    def __init__(self, password=None, salt=None):
        if bool(password) != bool(salt):
            raise VaultError("give both the encryption password and the encryption salt, or neither")
        self._aead = None
        if password:
            try:
                salt_bytes = bytes.fromhex(salt)
            except ValueError:
                raise VaultError("the encryption salt must be a hex string, e.g. 8f3a2c...") from None
            self._aead = AESGCM(hashlib.pbkdf2_hmac("sha256", password.encode(), salt_bytes, KEY_ROUNDS))

    @property
    def encrypting(self):
        return self._aead is not None

    def seal(self, secrets):
        """The stored form of a dict of secrets."""
        plaintext = json.dumps(secrets).encode()
        if self._aead is None:
            return PLAIN_PREFIX + plaintext.decode()
        nonce = os.urandom(12)
        return SEALED_PREFIX + base64.b64encode(nonce + self._aead.encrypt(nonce, plaintext, None)).decode()

    def open(self, stored):
        """The secrets back, or VaultError when they were sealed under another password or none is set."""
        if stored.startswith(PLAIN_PREFIX):
            return json.loads(stored[len(PLAIN_PREFIX):])
        if self._aead is None:
            raise VaultError("sealed, and no encryption password is set")
        raw = base64.b64decode(stored[len(SEALED_PREFIX):])
        try:
            return json.loads(self._aead.decrypt(raw[:12], raw[12:], None))
        except InvalidTag:
            raise VaultError("sealed under another encryption password or salt") from None
