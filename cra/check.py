"""cra-agent --check: everything the agent needs before its first poll, tried once, for the person
setting up a gateway: the configuration, the way to the tenant, and the device's credentials.
"""
from cra.bootstrap import WAITING, CredentialsFileError
from cra.c8y import C8y, CloudError, CloudUnreachable
from cra.errors import AgentError
from cra.signin import BOOTSTRAP, CredentialsRejected, sign_in


class CheckFailed(AgentError):
    pass


def check(config):
    """What was found, as a line to print; CheckFailed says what failed, in the words the agent logs it with."""
    try:
        signed_in = sign_in(config, lambda: _not_accepted(config))
    except CloudError as exc:  # a 401 is CredentialsRejected
        raise CheckFailed(_refused(exc, BOOTSTRAP)) from None
    except (CloudUnreachable, CredentialsFileError, CredentialsRejected) as exc:
        raise CheckFailed(str(exc)) from None
    if signed_in.not_stored:
        raise CheckFailed(signed_in.not_stored)
    access = signed_in.access
    try:
        device_id = C8y(access).find_device(config.external_id)
    except CloudError as exc:
        raise CheckFailed(str(signed_in.rejected(config.cloud.url)) if exc.status == 401 else
                          _refused(exc, signed_in.credentials)) from None
    except CloudUnreachable as exc:
        raise CheckFailed(str(exc)) from None
    who = f"as {access.tenant}/{access.user}" if access.user else "with the token"
    if device_id is None:
        return f"signed in to {config.cloud.url} {who}; device {config.external_id} is not registered yet: the agent registers it when it starts"
    return f"signed in to {config.cloud.url} {who}; device {config.external_id} is managed object {device_id}"


def _refused(exc, credentials):
    return f"{exc}: check {credentials}" if exc.status == 403 else str(exc)


def _not_accepted(config):
    raise CheckFailed(f"the bootstrap user is accepted; {WAITING}: register external id "
                      f"{config.external_id} there (Devices > Registration) and accept it")
