"""Bootstrap registration (docs/wire.md section 2): a device with no credentials of its own asks the
platform for them with the tenant's bootstrap user, and keeps them in a file. The platform hands
them out only once, so they are kept with care: the directory is checked before asking, the file
is replaced atomically, and a file the agent cannot read is reported, never overwritten.
"""
import json
import os
import tempfile
from dataclasses import replace

from cra.errors import AgentError, os_error_words

WAITING = "waiting for the device to be accepted in Device Management"
KEYS = ("tenant", "user", "password")


class CredentialsFileError(AgentError):
    pass


def bootstrap_access(config):
    """The cloud access of the bootstrap user: management/devicebootstrap by default."""
    bootstrap = config.bootstrap
    return replace(config.cloud, tenant=bootstrap.tenant, user=bootstrap.user, password=bootstrap.password, token="")


def device_access(config, credentials):
    return replace(config.cloud, token="", **credentials)


class CredentialsFile:
    def __init__(self, path):
        self.path = path
        self.directory = os.path.dirname(path)

    def load(self):
        """The stored {tenant, user, password}, or None when the device has none yet."""
        try:
            with open(self.path, encoding="utf-8") as handle:
                stored = json.load(handle)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CredentialsFileError(f"cannot read the device credentials in {self.path}: {os_error_words(exc)}") from None
        except ValueError:
            stored = None
        if not isinstance(stored, dict) or not all(isinstance(stored.get(key), str) and stored[key] for key in KEYS):
            raise CredentialsFileError(f"{self.path} does not hold device credentials as cra-agent writes them; "
                                       f"it is left as it is: restore it, or remove it to register the device again")
        return {key: stored[key] for key in KEYS}

    def prepare(self):
        """Make sure the credentials can be kept before asking for them."""
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise CredentialsFileError(f"cannot create {self.directory} for the device credentials: {os_error_words(exc)}") from None
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise CredentialsFileError(f"cannot write the device credentials into {self.directory}: permission denied")

    def save(self, credentials):
        """Written to a temporary file (mode 0600) and renamed: a crash leaves the whole file or none."""
        try:
            handle, temporary = tempfile.mkstemp(dir=self.directory, prefix=".credentials-")
            try:
                with os.fdopen(handle, "w", encoding="utf-8") as out:
                    json.dump({key: credentials[key] for key in KEYS}, out)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temporary, self.path)
            except BaseException:
                os.unlink(temporary)
                raise
            directory = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            raise CredentialsFileError(f"cannot write the device credentials to {self.path}: {os_error_words(exc)}") from None
