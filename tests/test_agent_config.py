"""The agent's configuration and command line: a mistake stops it at start, saying where and what."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cra.config import OPTIONS, SERIAL_OPTIONS, ConfigError, SerialPort, load
from toolkit.programs import AGENT_CONFIG, AGENT_SCRIPT

REPO = Path(AGENT_SCRIPT).parent
SHIPPED = REPO / "etc" / "cra-agent.conf"
GOOD = AGENT_CONFIG + "poll_interval = 5\n"


def write(tmp_path, text):
    path = tmp_path / "agent.conf"
    path.write_text(text)
    return path


def agent(*args, env=None, timeout=30):
    return subprocess.run([sys.executable, AGENT_SCRIPT, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_a_good_file_gives_its_values_and_the_defaults(tmp_path):
    config = load(write(tmp_path, GOOD), environ={})
    assert (config.cloud.url, config.cloud.tenant, config.cloud.user, config.external_id) == \
           ("https://example.cumulocity.com", "t100", "device_gw-001", "gw-001")
    assert (config.poll_interval, config.max_tunnels, config.connect_timeout, config.ping_interval) == (5.0, 20, 10.0, 30.0)
    assert config.cloud.websocket_url == "wss://example.cumulocity.com"
    assert "s3cret-Pw" not in repr(config), "a Config printed in a traceback must not show the password"


def test_the_shipped_file_documents_every_option_and_loads(tmp_path):
    """etc/cra-agent.conf is the reference: each option there, in its section, with its default."""
    text = SHIPPED.read_text()
    sections = re.split(r"^;? ?\[([\w:]+)\]$", text, flags=re.M)
    documented = {(name.split(":")[0], option) for name, body in zip(sections[1::2], sections[2::2])
                  for option in re.findall(r"^;? ?(\w+) =", body, flags=re.M)}
    assert documented == set(OPTIONS) | {("serial", option) for option in SERIAL_OPTIONS}
    for (section, option), (_, default) in [*OPTIONS.items(), *((("serial", o), d) for o, d in SERIAL_OPTIONS.items())]:
        if default not in (None, ""):
            shown = f"{default:g}" if isinstance(default, float) else str(default).lower() if isinstance(default, bool) \
                else default
            assert re.search(rf"^;? ?{option} = {shown}$", text, flags=re.M), option
    with pytest.raises(ConfigError, match=r"\[c8y\] url: required, and not set"):
        load(SHIPPED, environ={})  # as installed: it says what to fill in, and contacts nobody
    filled_in = {"CRA_C8Y_URL": "https://example.cumulocity.com", "CRA_C8Y_EXTERNAL_ID": "gw-001",
                 "CRA_BOOTSTRAP_PASSWORD": "boot-pw"}
    assert load(SHIPPED, environ=filled_in).bootstrapping


@pytest.mark.parametrize("change, complaint", [
    (("[agent]", "[agent]\npoll_intervall = 5"), "[agent] poll_intervall: unknown option (known: device_name"),
    (("[agent]", "[tunnels]\nmax = 3\n[agent]"), "[tunnels] max: unknown option (known: none"),
    (("poll_interval = 5", "poll_interval = fast"), "[agent] poll_interval: must be a positive number of seconds, not 'fast'"),
    (("poll_interval = 5", "poll_interval = -1"), "[agent] poll_interval: must be a positive number"),
    (("poll_interval = 5", "max_tunnels = 0"), "[agent] max_tunnels: must be a whole number of 1 or more, not '0'"),
    (("poll_interval = 5", "max_tunnels = 2.5"), "[agent] max_tunnels: must be a whole number"),
    (("https://example.cumulocity.com", "ftp://example.cumulocity.com"), "[c8y] url: must be an http or https URL"),
    (("https://example.cumulocity.com", "example.cumulocity.com"), "[c8y] url: must be an http or https URL"),
    (("https://example.cumulocity.com", "http://127.0.0.1:99999"), "[c8y] url: the port in 'http://127.0.0.1:99999' is not a port number from 1 to 65535"),
    (("https://example.cumulocity.com", "https://example.cumulocity.com:0"), "is not a port number from 1 to 65535"),
    (("https://example.cumulocity.com", "https://example.cumulocity.com:ssh"), "is not a port number from 1 to 65535"),
    (("url = https://example.cumulocity.com\n", ""), "[c8y] url: required, and not set"),
    (("external_id = gw-001", "external_id ="), "[c8y] external_id: required, and not set"),
    (("user = device_gw-001\n", ""), "[c8y] user: required with [c8y] password, and not set"),
    (("user = device_gw-001\npassword = s3cret-Pw\n", ""), "[bootstrap] password: required when [c8y] has no user or token"),
    (("tenant = t100\n", ""), "[c8y] tenant: required with user/password authentication"),
    (("[agent]", "[log]\ndestination = agent.log\n[agent]"), "[log] destination: must be syslog, stderr or an absolute path"),
    (("[agent]", "[bootstrap]\ncredentials_file = creds\n[agent]"), "[bootstrap] credentials_file: must be an absolute path"),
    (("password = s3cret-Pw", "token = abc.def.ghi\npassword = s3cret-Pw"), "give either token or user and password"),
    (("[agent]", "[agent]\nproxy = http://proxy:3128"), "[agent] proxy: unknown option"),
    (("[c8y]", "[c8y]\nca_file = /nonexistent/ca.pem"), "[c8y] ca_file: no such file: /nonexistent/ca.pem"),
    (("[c8y]", "[c8y]\nproxy = socks5://proxy:1080"), "[c8y] proxy: must be an http or https URL"),
    (("[c8y]", "c8y]"), "not a valid INI file"),
    (("poll_interval = 5", "idle_timeout = -1"), "[agent] idle_timeout: must be a number of seconds, or 0 for no limit"),
    (("poll_interval = 5", "max_session_time = forever"), "[agent] max_session_time: must be a number of seconds, or 0"),
    (("poll_interval = 5", "session_events = maybe"), "[agent] session_events: must be true or false, not 'maybe'"),
])
def test_a_mistake_is_refused_with_the_file_the_option_and_why(tmp_path, change, complaint):
    path = write(tmp_path, GOOD.replace(*change))
    with pytest.raises(ConfigError) as refused:
        load(path, environ={})
    assert complaint in str(refused.value) and str(path) in str(refused.value)
    assert "s3cret-Pw" not in str(refused.value)


def test_token_alone_is_enough(tmp_path):
    text = GOOD.replace("tenant = t100\nuser = device_gw-001\npassword = s3cret-Pw\n", "token = abc.def.ghi\n")
    assert load(write(tmp_path, text), environ={}).cloud.authorization == "Bearer abc.def.ghi"


def test_the_environment_overrides_the_file(tmp_path):
    config = load(write(tmp_path, GOOD), environ={"CRA_C8Y_PASSWORD": "from-env", "CRA_AGENT_MAX_TUNNELS": "3"})
    assert (config.cloud.password, config.max_tunnels) == ("from-env", 3)


def test_a_bad_environment_value_names_the_variable(tmp_path):
    with pytest.raises(ConfigError, match=r"environment CRA_AGENT_POLL_INTERVAL: must be a positive number"):
        load(write(tmp_path, GOOD), environ={"CRA_AGENT_POLL_INTERVAL": "soon"})


def test_a_bad_config_exits_2_with_one_clear_line(tmp_path):
    path = write(tmp_path, GOOD.replace("poll_interval = 5", "poll_interval = fast"))
    result = agent("-c", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == f"cra-agent: {path}: [agent] poll_interval: must be a positive number of seconds, not 'fast'"


def test_a_missing_file_exits_2(tmp_path):
    result = agent("-c", str(tmp_path / "nope.conf"))
    assert result.returncode == 2
    assert "nope.conf: cannot read the configuration file: No such file or directory" in result.stderr


@pytest.mark.parametrize("args", [["-c"], ["-c", "x.conf", "--bogus"]])
def test_a_bad_command_line_exits_2_with_usage(args):
    result = agent(*args)
    assert result.returncode == 2 and "usage: cra-agent" in result.stderr


def test_version_and_help_from_a_checkout_and_installed():
    """Both ways in: `python3 cra_agent.py` from the checkout and the `cra-agent` console script."""
    installed = shutil.which("cra-agent", path=os.path.dirname(sys.executable))
    assert installed, "cra-agent is not installed beside this python"
    for command in ([sys.executable, AGENT_SCRIPT], [installed]):
        version = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=30)
        assert version.returncode == 0 and re.fullmatch(r"cra-agent \d+\.\d+\.\d+\n", version.stdout)
        usage = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=30).stdout
        assert "-c FILE" in usage and "--verbose" in usage and "CRA_C8Y_PASSWORD" in usage


def test_a_clean_stop_exits_0(cloud, make_agent):
    agent_process = make_agent(cloud)
    agent_process.wait_for_log("device gw-001 is managed object")
    assert agent_process.stop() == 0
    assert "Traceback" not in agent_process.log()


# The [serial:NAME] sections of the configuration file

def config_file(tmp_path, *sections):
    """A good configuration file plus the sections ({"serial:plc": {option: value}}); its path."""
    return write(tmp_path, GOOD + "".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in options.items())
                                          for section in sections for name, options in section.items()))


PLC = {"target": "127.0.0.1:7001", "url": "/dev/ttyUSB0"}


def test_a_serial_section_gives_its_values_and_the_defaults(tmp_path):
    """A section as the README writes it (an inline comment included), and one with every option set."""
    modem = {"target": "Modem.LAN:2323", "url": "rfc2217://127.0.0.1:4000", "baudrate": "9600", "bytesize": "7",
             "parity": "E", "stopbits": "1.5", "flow": "rtscts", "mode": "raw"}
    path = config_file(tmp_path, {"serial:plc": {**PLC, "mode": "telnet          ; the web terminal speaks telnet"}},
                       {"serial:modem": modem})
    assert load(path, environ={}).serial_ports == (
        SerialPort(name="plc", target=("127.0.0.1", 7001), url="/dev/ttyUSB0", baudrate=115200, bytesize=8,
                   parity="N", stopbits=1.0, flow="none", mode="telnet"),
        SerialPort(name="modem", target=("modem.lan", 2323), url="rfc2217://127.0.0.1:4000", baudrate=9600,
                   bytesize=7, parity="E", stopbits=1.5, flow="rtscts", mode="raw"))


MISTAKES = [
    ({"speed": "9600"}, "speed",
     "unknown option (known: target, url, baudrate, bytesize, parity, stopbits, flow, mode)"),
    ({"mode": "ssh"}, "mode", "must be one of raw, telnet, not 'ssh'"),
    ({"flow": "hardware"}, "flow", "must be one of none, rtscts, xonxoff, not 'hardware'"),
    ({"parity": "X"}, "parity", "must be one of N, E, O, M, S, not 'X'"),
    ({"bytesize": "9"}, "bytesize", "must be one of 5, 6, 7, 8, not '9'"),
    ({"stopbits": "3"}, "stopbits", "must be one of 1, 1.5, 2, not '3'"),
    ({"baudrate": "fast"}, "baudrate", "must be a whole number of 1 or more, not 'fast'"),
    ({"target": None}, "target", "required, and not set"),
    ({"url": None}, "url", "required, and not set"),
    ({"url": ""}, "url", "required, and not set"),
    ({"target": "plc"}, "target",
     "must be host:port as in the platform's configuration, e.g. 127.0.0.1:7001, not 'plc'"),
    ({"target": ":7001"}, "target", "must be host:port"),
    ({"target": "127.0.0.1:telnet"}, "target", "must be host:port"),
    ({"target": "127.0.0.1:0"}, "target", "must be host:port"),
    ({"target": "127.0.0.1:65536"}, "target", "must be host:port"),
]


@pytest.mark.parametrize("change, option, complaint", MISTAKES,
                         ids=[" ".join(f"{k}={v}" if v is not None else f"no {k}" for k, v in change.items())
                              for change, _, _ in MISTAKES])
def test_a_serial_section_mistake_names_the_file_the_section_and_the_option(tmp_path, change, option, complaint):
    """Refused at start, in one line that says where: the file, [serial:NAME] and the option."""
    options = {k: v for k, v in {**PLC, **change}.items() if v is not None}
    path = config_file(tmp_path, {"serial:plc": options})
    with pytest.raises(ConfigError) as refused:
        load(path, environ={})
    assert str(refused.value).startswith(f"{path}: [serial:plc] {option}: ")
    assert complaint in str(refused.value)


def test_one_target_in_two_sections_is_refused(tmp_path):
    """Which port would an operation go to? Host names are compared as the platform does, case aside."""
    path = config_file(tmp_path, {"serial:a": {"target": "PLC.lan:7001", "url": "/dev/ttyUSB0"}},
                       {"serial:b": {"target": "plc.LAN:7001", "url": "/dev/ttyUSB1"}})
    with pytest.raises(ConfigError) as refused:
        load(path, environ={})
    assert str(refused.value) == f"{path}: [serial:b] target: plc.lan:7001 is already the target of [serial:a]"
