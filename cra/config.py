"""The agent's settings: an INI file, overridden by CRA_<SECTION>_<OPTION> environment variables.

Everything is checked once, at start, into one frozen Config; a mistake is refused with the
file, the option and what is wrong, because a gateway's agent is fixed over a serial console
by someone reading that one line.
"""
import base64
import configparser
import os
from dataclasses import dataclass, fields
from urllib.parse import urlsplit

from cra.allow import DEFAULT_LIST, AllowError, AllowList, parse as parse_allow
from cra.errors import AgentError


class ConfigError(AgentError, ValueError):
    pass


@dataclass(frozen=True)
class CloudAccess:
    """Where the tenant is and how to get in: what the agent and cra-connect have in common."""
    url: str
    tenant: str = ""
    user: str = ""
    password: str = ""
    token: str = ""
    ca_file: str = ""
    proxy: str = ""
    request_timeout: float = 30.0
    keepalive: float = 30.0

    @property
    def websocket_url(self):
        return "ws" + self.url[len("http"):]

    @property
    def authorization(self):
        """The Authorization header: Bearer with a token, else Basic with the tenant-prefixed user (docs/wire.md section 1)."""
        if self.token:
            return f"Bearer {self.token}"
        return "Basic " + base64.b64encode(f"{self.tenant}/{self.user}:{self.password}".encode()).decode()

    def __repr__(self):
        return f"CloudAccess(url={self.url!r}, tenant={self.tenant!r}, user={self.user!r})"


@dataclass(frozen=True)
class SerialPort:
    """A [serial:NAME] section: operations for `target` (host, port) go to this serial port."""
    name: str
    target: tuple
    url: str
    baudrate: int
    bytesize: int
    parity: str
    stopbits: float
    flow: str
    mode: str


@dataclass(frozen=True)
class Bootstrap:
    """[bootstrap]: how a device with no credentials of its own gets them, and where it keeps them."""
    user: str
    password: str
    tenant: str
    credentials_file: str

    def __repr__(self):
        return f"Bootstrap(user={self.user!r}, tenant={self.tenant!r}, credentials_file={self.credentials_file!r})"


@dataclass(frozen=True)
class LogSettings:
    """[log]: where a daemon's log lines go when it is not run in the foreground."""
    destination: str
    max_bytes: int
    backups: int


@dataclass(frozen=True)
class Config:
    cloud: CloudAccess
    external_id: str
    bootstrap: Bootstrap
    log: LogSettings
    device_name: str
    device_type: str
    operations: str
    poll_interval: float
    max_backoff: float
    connect_timeout: float
    max_tunnels: int
    ping_interval: float
    idle_timeout: float
    max_session_time: float
    session_events: bool
    allow: AllowList
    serial_ports: tuple = ()

    @property
    def bootstrapping(self):
        """No device user or token is configured: the agent registers with [bootstrap]."""
        return not (self.cloud.user or self.cloud.token)


# (section, option): (type, default); a default of None marks a required option. A "limit" is seconds,
# or 0 for none; a "switch" is true or false; "allow" is cra.allow's list of targets.
OPTIONS = {
    ("c8y", "url"): ("url", None),
    ("c8y", "tenant"): (str, ""),
    ("c8y", "user"): (str, ""),
    ("c8y", "password"): (str, ""),
    ("c8y", "token"): (str, ""),
    ("c8y", "external_id"): (str, None),
    ("c8y", "ca_file"): ("file", ""),
    ("c8y", "proxy"): ("proxy", ""),
    ("c8y", "request_timeout"): (float, 30.0),
    ("c8y", "keepalive"): (float, 30.0),
    ("agent", "device_name"): (str, ""),
    ("agent", "device_type"): (str, "c8y_Linux"),
    ("agent", "operations"): (("notifications", "polling"), "notifications"),
    ("agent", "poll_interval"): (float, 5.0),
    ("agent", "max_backoff"): (float, 60.0),
    ("agent", "connect_timeout"): (float, 10.0),
    ("agent", "max_tunnels"): (int, 20),
    ("agent", "ping_interval"): (float, 30.0),
    ("agent", "idle_timeout"): ("limit", 3600.0),
    ("agent", "max_session_time"): ("limit", 0.0),
    ("agent", "session_events"): ("switch", True),
    ("agent", "allow"): ("allow", DEFAULT_LIST),
    ("bootstrap", "user"): (str, "devicebootstrap"),
    ("bootstrap", "password"): (str, ""),
    ("bootstrap", "tenant"): (str, "management"),
    ("bootstrap", "credentials_file"): ("path", "/var/lib/cra-agent/credentials"),
    ("log", "destination"): ("log", "syslog"),
    ("log", "max_bytes"): (int, 1048576),
    ("log", "backups"): (int, 3),
}


SWITCH = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
SERIAL_SECTION = "serial:"
# The options of a [serial:NAME] section; a tuple of words is the choices.
SERIAL_OPTIONS = {
    "target": ("target", None),
    "url": (str, None),
    "baudrate": (int, 115200),
    "bytesize": (("5", "6", "7", "8"), "8"),
    "parity": (("N", "E", "O", "M", "S"), "N"),
    "stopbits": (("1", "1.5", "2"), "1"),
    "flow": (("none", "rtscts", "xonxoff"), "none"),
    "mode": (("raw", "telnet"), "raw"),
}


def env_name(section, option):
    return f"CRA_{section.upper()}_{option.upper()}"


def load(path, environ=os.environ):
    """The Config from the file at `path` and the environment, or ConfigError saying where and why."""
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"))
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc.strerror}") from None
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a valid INI file: {exc}") from None
    for section in parser.sections():
        serial = section.startswith(SERIAL_SECTION)
        for option in parser.options(section):
            if (option not in SERIAL_OPTIONS) if serial else ((section, option) not in OPTIONS):
                known = ", ".join(SERIAL_OPTIONS if serial else (o for s, o in OPTIONS if s == section)) \
                    or "none: known sections are [c8y], [agent], [bootstrap], [log] and [serial:NAME]"
                raise ConfigError(f"{path}: [{section}] {option}: unknown option (known: {known})")
    values = {(section, option): _value(parser, path, section, option, kind, default, environ)
              for (section, option), (kind, default) in OPTIONS.items()}

    def section(name):
        return {option: value for (s, option), value in values.items() if s == name}

    config = Config(
        cloud=CloudAccess(**{f.name: values[("c8y", f.name)] for f in fields(CloudAccess)}),
        external_id=values[("c8y", "external_id")], bootstrap=Bootstrap(**section("bootstrap")),
        log=LogSettings(**section("log")), serial_ports=_serial_ports(parser, path), **section("agent"))
    _check_credentials(config, path)
    return config


def _value(parser, path, section, option, kind, default, environ=None):
    """One option's value: from the environment when set there, else the file, else its default."""
    where = f"{path}: [{section}] {option}"
    raw = (environ or {}).get(env_name(section, option))
    if raw is not None:
        where = f"environment {env_name(section, option)}"
    elif parser.has_option(section, option):
        raw = parser.get(section, option)
    if raw is None or raw.strip() == "":
        if default is None:
            raise ConfigError(f"{where}: required, and not set")
        return default
    return _convert(kind, raw.strip(), where)


def _serial_ports(parser, path):
    ports, targets = [], {}
    for section in parser.sections():
        if not section.startswith(SERIAL_SECTION):
            continue
        name = section[len(SERIAL_SECTION):]
        values = {option: _value(parser, path, section, option, kind, default)
                  for option, (kind, default) in SERIAL_OPTIONS.items()}
        if values["target"] in targets:
            raise ConfigError(f"{path}: [{section}] target: {values['target'][0]}:{values['target'][1]} "
                              f"is already the target of [{targets[values['target']]}]")
        targets[values["target"]] = section
        ports.append(SerialPort(name=name, **{**values, "bytesize": int(values["bytesize"]),
                                              "stopbits": float(values["stopbits"])}))
    return tuple(ports)


def _convert(kind, raw, where):
    if kind is str:
        return raw
    if isinstance(kind, tuple):
        if raw not in kind:
            raise ConfigError(f"{where}: must be one of {', '.join(kind)}, not {raw!r}")
        return raw
    if kind == "target":
        host, _, port = raw.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not host or not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise ConfigError(f"{where}: must be host:port as in the platform's configuration, e.g. 127.0.0.1:7001, not {raw!r}")
        return host.lower(), int(port)
    if kind is int:
        if not raw.isascii() or not raw.isdigit() or int(raw) < 1:
            raise ConfigError(f"{where}: must be a whole number of 1 or more, not {raw!r}")
        return int(raw)
    if kind == "switch":
        if raw.lower() not in SWITCH:
            raise ConfigError(f"{where}: must be true or false, not {raw!r}")
        return SWITCH[raw.lower()]
    if kind == "allow":
        try:
            return parse_allow(raw)
        except AllowError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if kind == "limit":
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not 0 <= value < float("inf"):
            raise ConfigError(f"{where}: must be a number of seconds, or 0 for no limit, not {raw!r}")
        return value
    if kind is float:
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not 0 < value < float("inf"):
            raise ConfigError(f"{where}: must be a positive number of seconds, not {raw!r}")
        return value
    if kind == "file":
        if not os.path.isfile(raw):
            raise ConfigError(f"{where}: no such file: {raw}")
        return raw
    if kind == "path" or (kind == "log" and raw not in ("syslog", "stderr")):
        if not os.path.isabs(raw):
            choices = "syslog, stderr or " if kind == "log" else ""
            raise ConfigError(f"{where}: must be {choices}an absolute path such as /var/log/cra-agent.log, not {raw!r}")
        return raw
    if kind == "log":
        return raw
    parts = urlsplit(raw)
    try:
        port_ok = parts.port != 0  # urlsplit raises when it is no number from 0 to 65535
    except ValueError:
        port_ok = False
    if not port_ok:
        raise ConfigError(f"{where}: the port in {raw!r} is not a port number from 1 to 65535")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        example = "https://example.cumulocity.com" if kind == "url" else "http://proxy.example:3128"
        raise ConfigError(f"{where}: must be an http or https URL such as {example}, not {raw!r}")
    return raw.rstrip("/")


def _check_credentials(config, path):
    """A token, or tenant, user and password, or none of them and a [bootstrap] password."""
    cloud = config.cloud
    if cloud.token and (cloud.user or cloud.password):
        raise ConfigError(f"{path}: [c8y] token: give either token or user and password, not both")
    if config.bootstrapping:
        if cloud.password:
            raise ConfigError(f"{path}: [c8y] user: required with [c8y] password, and not set")
        if not config.bootstrap.password:
            raise ConfigError(f"{path}: [bootstrap] password: required when [c8y] has no user or token "
                              f"(the device then registers itself with the bootstrap user), and not set")
    elif not cloud.token:
        for option in ("tenant", "password"):
            if not getattr(cloud, option):
                raise ConfigError(f"{path}: [c8y] {option}: required with user/password authentication "
                                  f"(or set [c8y] token), and not set")
