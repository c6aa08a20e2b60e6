"""cra-agent --check: everything the agent needs before its first poll, tried once, for the person
setting up a gateway: the configuration, the way to the tenant, and the device's credentials.
"""
from cra.bootstrap import WAITING, CredentialsFile, CredentialsFileError, bootstrap_access, device_access
from cra.c8y import C8y, CloudError, CloudUnreachable


class CheckFailed(Exception):
    pass


def check(config):
    """What was found, as a line to print; CheckFailed says what failed."""
    try:
        access, credentials = _device_access(config)
        device_id = _asked(lambda: C8y(access).find_device(config.external_id), credentials, config)
    except (CloudUnreachable, CredentialsFileError) as exc:
        raise CheckFailed(str(exc)) from None
    signed_in = f"signed in to {config.cloud.url} as {access.tenant}/{access.user}" if access.user else \
        f"signed in to {config.cloud.url} with the token"
    if device_id is None:
        return f"{signed_in}; device {config.external_id} is not registered yet: the agent registers it when it starts"
    return f"{signed_in}; device {config.external_id} is managed object {device_id}"


def _device_access(config):
    """(the cloud access the agent will poll with, what its credentials are in words)."""
    if not config.bootstrapping:
        return config.cloud, "[c8y] tenant, user and password (or token)"
    stored = CredentialsFile(config.bootstrap.credentials_file)
    credentials = stored.load()
    if credentials is None:
        stored.prepare()
        bootstrap = C8y(bootstrap_access(config))
        credentials = _asked(lambda: bootstrap.device_credentials(config.external_id),
                             "[bootstrap] user, password and tenant", config)
        if credentials is None:
            raise CheckFailed(f"the bootstrap user is accepted; {WAITING}: register external id "
                              f"{config.external_id} there (Devices > Registration) and accept it")
        stored.save(credentials)
    return device_access(config, credentials), f"the device credentials in {stored.path}"


def _asked(request, credentials, config):
    """What the platform answered; a refusal in the words the running agent logs it with."""
    try:
        return request()
    except CloudError as exc:
        if exc.status == 401:
            raise CheckFailed(f"credentials rejected by {config.cloud.url}: check {credentials}") from None
        raise CheckFailed(f"{exc}: check {credentials}" if exc.status == 403 else str(exc)) from None
