"""How the agent signs in, decided in one place for the running agent and for --check: the
credentials the file names, or the device's own, stored after bootstrap registration or asked for
now. Whoever asks says what to do while the device waits for an administrator's acceptance.
"""
from dataclasses import dataclass
from typing import Optional

from cra.bootstrap import CredentialsFile, CredentialsFileError, bootstrap_access, device_access
from cra.c8y import C8y, CloudError
from cra.config import CloudAccess
from cra.errors import AgentError

CONFIGURED = "[c8y] tenant, user and password (or token)"
BOOTSTRAP = "[bootstrap] user, password and tenant"


class CredentialsRejected(AgentError):
    """The platform answered 401; the sentence says what to do about it."""


@dataclass(frozen=True)
class SignIn:
    access: CloudAccess
    credentials: str  # which credentials these are, as a person finds them
    advice: str  # what to do when the platform rejects them
    received: bool = False  # given by bootstrap registration just now
    not_stored: Optional[str] = None  # why received credentials could not be kept, if they could not

    def rejected(self, url):
        return CredentialsRejected(f"credentials rejected by {url}: {self.advice}")


def configured(config):
    return SignIn(config.cloud, CONFIGURED, f"check {CONFIGURED}")


def sign_in(config, not_accepted_yet):
    """The SignIn to use from now on; None when `not_accepted_yet()`, called after each answer that
    the device is not accepted yet, returns False (it may wait, or raise, before it returns)."""
    if not config.bootstrapping:
        return configured(config)
    stored = CredentialsFile(config.bootstrap.credentials_file)
    in_file = f"the device credentials in {stored.path}"
    advice = (f"{in_file} are no longer valid; the file is kept as it is: remove it to register the device "
              f"again through bootstrap")
    credentials = stored.load()
    if credentials is not None:
        return SignIn(device_access(config, credentials), in_file, advice)
    stored.prepare()
    asking = SignIn(bootstrap_access(config), BOOTSTRAP, f"check {BOOTSTRAP}")
    bootstrap = C8y(asking.access)
    try:
        while not (credentials := bootstrap.device_credentials(config.external_id)):
            if not not_accepted_yet():
                return None
    except CloudError as exc:
        raise asking.rejected(config.cloud.url) if exc.status == 401 else exc
    finally:
        bootstrap.close()
    try:
        stored.save(credentials)
        problem = None
    except CredentialsFileError as exc:
        problem = str(exc)
    return SignIn(device_access(config, credentials), in_file, advice, received=True, not_stored=problem)
