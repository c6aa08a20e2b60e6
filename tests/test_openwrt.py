"""The agent on OpenWrt: the .ipk as opkg takes it, the procd init script as rc.common runs it, the
package scripts as opkg and apk run them, and the SDK recipe as OpenWrt's build reads it.

Nothing here runs a real OpenWrt, procd or SDK. The init script and the package scripts run for real
under /bin/sh, against stand-ins for rc.common, /lib/functions.sh and procd.sh that record what
the script asks procd for; the stand-ins follow OpenWrt's own files (openwrt/openwrt
package/base-files/files/etc/rc.common, .../lib/functions.sh, package/system/procd/files/procd.sh),
written from reading them, not copied. The SDK recipe runs under GNU make against stand-ins for
$(TOPDIR)/rules.mk and $(INCLUDE_DIR)/package.mk.
"""
import gzip
import io
import os
import re
import shutil
import tarfile

import pytest

from cra.agent import STOP_WAIT
from cra.cli import parse_args
from cra.config import load
from toolkit.packages import AGENT_MODULES, TOP, VERSION, build, need, run

IPK_DEPENDS = ("python3-light, python3-logging, python3-openssl, python3-urllib, python3-codecs, "
               "python3-requests, python3-websocket-client, python3-pyserial")
OPENWRT_SHELL = ["init.d/cra-agent.openwrt", "packaging/ipk/postinst", "packaging/ipk/prerm"]
RECIPE = TOP / "packaging" / "openwrt" / "cra-agent"

# /etc/rc.common with /lib/functions.sh and procd.sh, reduced to what a procd init script uses.
# Each procd call is one line of $RECORD, its words tab-separated. config_load reads
# $UCI_DIR/<package>: a UCI file is shell once `config` and `option` are functions, as the
# `uci export` text is that /lib/functions.sh evaluates.
RC_COMMON = r"""
initscript=$1
action=$2
shift 2

record() { (IFS='	'; printf '%s\n' "$*") >> "$RECORD"; }

config_cb() { :; }
option_cb() { :; }
list_cb() { :; }
package() { :; }
config() { CONFIG_SECTION=$2; config_cb "$1" "$2"; }
option() { eval "CONFIG_${CONFIG_SECTION}_$1=\$2"; option_cb "$1" "$2"; }
list() { list_cb "$1" "$2"; }
config_load() { . "$UCI_DIR/$1"; }
config_get() { eval "$1=\${CONFIG_$2_$3:-\$4}"; }
config_get_bool() {
	config_get "$@"
	eval "case \$$1 in 1|on|true|yes|enabled) $1=1 ;; 0|off|false|no|disabled) $1=0 ;; *) $1=\$4 ;; esac"
}

start_service() { return 0; }
stop_service() { return 0; }
service_triggers() { return 0; }
enable() { record enable; }
disable() { record disable; }

procd_open_service() { record open_service "$@"; }
procd_close_service() { service_triggers; record close_service "$@"; }
procd_open_instance() { record open_instance "$@"; }
procd_close_instance() { record close_instance; }
procd_set_param() { record set_param "$@"; }
procd_append_param() { record append_param "$@"; }
procd_add_reload_trigger() { record reload_trigger "$@"; }
procd_send_signal() { record signal "$@"; }
procd_kill() { record kill "$@"; }
procd_running() { record running "$@"; [ "$STUB_RUNNING" = 1 ]; }
chown() { record chown "$@"; }

. "$initscript"

name=$(basename "$initscript")
start() { procd_open_service "$name" "$initscript"; start_service "$@"; procd_close_service set; }
stop() { stop_service "$@"; procd_kill "$name" "$1"; }
reload() { if type reload_service >/dev/null 2>&1; then reload_service "$@"; else start; fi; }
restart() { stop "$@"; start "$@"; }

"$action" "$@"
"""

# The package scripts' /lib/functions.sh, as on the device (IPKG_INSTROOT only points the scripts
# here): default_postinst makes the users of the control file's Require-User, enables the init
# script unless PKG_UPGRADE=1 and starts it; default_prerm disables it unless PKG_UPGRADE=1 and
# stops it (package/base-files/files/lib/functions.sh).
FUNCTIONS_SH = r"""
record() { (IFS='	'; printf '%s\n' "$*") >> "$RECORD"; }
init() { sh "$IPKG_INSTROOT/etc/rc.common" "$IPKG_INSTROOT/etc/init.d/cra-agent" "$@"; }
add_group_and_user() {
	record add_group_and_user "$(sed -n 's/^Require-User: *//p' "$IPKG_INSTROOT/usr/lib/opkg/info/$1.control")"
}
default_postinst() {
	pkgname=$(basename "${1%.*}")
	add_group_and_user "$pkgname"
	[ "$PKG_UPGRADE" = 1 ] || init enable
	init start
}
default_prerm() {
	[ "$PKG_UPGRADE" = 1 ] || init disable
	init stop
}
"""

# $(TOPDIR)/rules.mk and $(INCLUDE_DIR)/package.mk: the INSTALL_* commands as OpenWrt's rules.mk
# has them, and a BuildPackage that prints the package's fields (target fields) and runs its
# Build/Prepare, Build/Compile and install into $(DESTDIR) (target install).
RULES_MK = """\
INSTALL_DIR:=install -d -m0755
INSTALL_BIN:=install -m0755
INSTALL_DATA:=install -m0644
INSTALL_CONF:=install -m0600
CP:=cp -fpR
"""
PACKAGE_MK = """\
PKG_BUILD_DIR:=$(BUILD_DIR)/$(PKG_NAME)-$(PKG_VERSION)
define BuildPackage
$(eval $(Package/$(1)))
fields:
\t@echo 'VERSION=$(PKG_VERSION)-$(PKG_RELEASE)'
\t@echo 'LICENSE=$(PKG_LICENSE)'
\t@echo 'DEPENDS=$(strip $(DEPENDS))'
\t@echo 'USERID=$(USERID)'
\t@echo 'PKGARCH=$(PKGARCH)'
\t@echo 'CONFFILES=$(strip $(Package/$(1)/conffiles))'
install:
\tmkdir -p $(PKG_BUILD_DIR)
\t$$(Build/Prepare)
\t$$(Build/Compile)
\t$$(call Package/$(1)/install,$(DESTDIR))
endef
"""

UCI = """\
config agent 'main'
\toption enabled '{enabled}'
\toption config_file '/etc/cra-agent/cra-agent.conf'
\toption user '{user}'

config c8y 'c8y'
\toption url '{url}'
\toption external_id 'gw-042'

config bootstrap 'bootstrap'
\toption password ''
\toption credentials_file '/etc/cra-agent/credentials'
"""


def uci(enabled=1, user="cra-agent", url="https://t100.example.com"):
    return UCI.format(enabled=enabled, user=user, url=url)


@pytest.fixture(scope="module")
def ipk(tmp_path_factory):
    return build("ipk", tmp_path_factory.mktemp("dist"))


def members(archive):
    """{name: (TarInfo, content)} of a gzip'd tar, in archive order."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return {m.name: (m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()}


def ipk_parts(ipk):
    """(control fields, {control file: content}, {data file: (content, mode)}) of the .ipk."""
    outer = members(ipk.read_bytes())
    control_files = {name[2:]: content for name, (_, content) in members(outer["./control.tar.gz"][1]).items() if content is not None}
    fields = dict(re.findall(r"^([\w-]+): (.*)$", control_files["control"].decode(), re.M))
    data = {name[2:]: (content, info.mode) for name, (info, content) in members(outer["./data.tar.gz"][1]).items()
            if content is not None}
    return fields, control_files, data


class Device:
    """The root of a make-believe OpenWrt: /etc/rc.common, /lib/functions.sh, the init script as
    installed, /etc/config/cra-agent, and what the scripts asked procd and the package tools for."""

    def __init__(self, root):
        self.root = root
        for path, text in {"etc/rc.common": RC_COMMON, "lib/functions.sh": FUNCTIONS_SH,
                           "etc/config/cra-agent": uci()}.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(text)
        self.install_init_script()
        self.record = root / "record"

    def install_init_script(self, text=None):
        init = self.root / "etc" / "init.d" / "cra-agent"
        init.parent.mkdir(parents=True, exist_ok=True)
        init.write_bytes(text or (TOP / "init.d" / "cra-agent.openwrt").read_bytes())

    def configure(self, **options):
        (self.root / "etc" / "config" / "cra-agent").write_text(uci(**options))

    def environ(self, running, upgrade):
        environ = {"PATH": os.environ["PATH"], "RECORD": str(self.record), "UCI_DIR": str(self.root / "etc" / "config"),
                   "IPKG_INSTROOT": str(self.root), "STUB_RUNNING": "1" if running else "0"}
        if upgrade is not None:
            environ["PKG_UPGRADE"] = "1" if upgrade else "0"
        return environ

    def calls(self, *command, running=True, upgrade=None):
        """What `command` (run by /bin/sh) asked for: a list of tuples, one a call."""
        self.record.write_text("")
        result = run("/bin/sh", *command, env=self.environ(running, upgrade), cwd=self.root, timeout=30)
        assert result.returncode == 0, result.stderr
        assert not result.stderr, result.stderr
        return [tuple(line.split("\t")) for line in self.record.read_text().splitlines()]

    def init(self, action, **options):
        return self.calls(str(self.root / "etc" / "rc.common"), str(self.root / "etc" / "init.d" / "cra-agent"), action, **options)


def sent_to_procd(calls):
    """The services the calls handed procd (ubus `service set`): [{"instances": [...], "triggers": [...]}],
    each instance {param: [values]} as procd compares them (set replaces, append adds)."""
    services, service, params = [], None, None
    for name, *args in calls:
        if name == "open_service":
            service = {"instances": [], "triggers": []}
        elif name == "open_instance":
            params = {}
        elif name == "set_param":
            params[args[0]] = args[1:]
        elif name == "append_param":
            params.setdefault(args[0], []).extend(args[1:])
        elif name == "close_instance":
            service["instances"].append(params)
        elif name == "reload_trigger":
            service["triggers"].append(args)
        elif name == "close_service":
            services.append(service)
    return services


def only_instance(calls):
    [service] = sent_to_procd(calls)
    [instance] = service["instances"]
    return instance


def environment(instance):
    return dict(pair.split("=", 1) for pair in instance.get("env", []))


@pytest.fixture
def device(tmp_path):
    return Device(tmp_path)


def test_the_openwrt_shell_passes_shellcheck():
    need("shellcheck")
    result = run("shellcheck", *OPENWRT_SHELL, cwd=TOP)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_ipk_is_as_opkg_expects_it(ipk):
    outer = members(ipk.read_bytes())
    assert list(outer) == ["./debian-binary", "./data.tar.gz", "./control.tar.gz"]
    assert outer["./debian-binary"][1] == b"2.0\n"
    control_files = members(outer["./control.tar.gz"][1])
    fields = dict(re.findall(r"^([\w-]+): (.*)$", control_files["./control"][1].decode(), re.M))
    assert (fields["Package"], fields["Version"], fields["Architecture"]) == ("cra-agent", VERSION, "all")
    assert fields["Depends"] == IPK_DEPENDS
    assert fields["Require-User"] == "cra-agent:cra-agent"
    data_tar = outer["./data.tar.gz"][1]
    assert int(fields["Installed-Size"]) == len(gzip.decompress(data_tar))
    assert control_files["./conffiles"][1].decode().split() == ["/etc/config/cra-agent", "/etc/cra-agent/cra-agent.conf"]
    for script in ("./postinst", "./prerm"):
        assert b"default_" in control_files[script][1] and control_files[script][0].mode == 0o755

    data = members(data_tar)
    init, init_script = data["./etc/init.d/cra-agent"]
    assert (init_script, init.mode) == ((TOP / "init.d" / "cra-agent.openwrt").read_bytes(), 0o755)
    assert data["./etc/config/cra-agent"][1] == (TOP / "init.d" / "cra-agent.uci").read_bytes()
    assert data["./etc/cra-agent/cra-agent.conf"][1] == (TOP / "etc" / "cra-agent.conf").read_bytes()
    keep = data["./lib/upgrade/keep.d/cra-agent"][1].decode()
    assert [line for line in keep.splitlines() if not line.startswith("#")] == ["/etc/cra-agent/"]
    launcher, launcher_text = data["./usr/bin/cra-agent"]
    assert launcher_text.startswith(b"#!/usr/bin/python3\n") and launcher.mode == 0o755
    assert sorted(n.rsplit("/", 1)[1] for n in data if n.startswith("./usr/share/cra-agent/cra/") and n.endswith(".py")) == AGENT_MODULES
    assert not [n for n in data if "cloud" in n or "connect.py" in n]
    assert {(m.uid, m.gid) for m, _ in list(data.values()) + list(outer.values())} == {(0, 0)}


def test_the_ipk_is_the_same_when_built_again(ipk, tmp_path):
    assert build("ipk", tmp_path).read_bytes() == ipk.read_bytes()


def test_the_shipped_uci_file_starts_the_agent_as_its_own_user_with_nothing_empty_passed(device):
    (device.root / "etc" / "config" / "cra-agent").write_bytes((TOP / "init.d" / "cra-agent.uci").read_bytes())
    instance = only_instance(device.init("start", running=False))
    assert instance["user"] == ["cra-agent"]
    assert environment(instance) == {"CRA_BOOTSTRAP_CREDENTIALS_FILE": "/etc/cra-agent/credentials"}


def test_start_asks_procd_for_the_agent_logging_to_syslog_respawned_for_ever(device):
    calls = device.init("start", running=False)
    [service] = sent_to_procd(calls)
    [instance] = service["instances"]
    assert instance["command"] == ["/usr/bin/cra-agent", "-c", "/etc/cra-agent/cra-agent.conf"]
    # UCI's values as CRA_<SECTION>_<OPTION>, the empty password left to the INI file; nothing of
    # section main, and no MALLOC_ARENA_MAX: OpenWrt's C library is musl, which does not read it.
    env = environment(instance)
    assert env == {"CRA_C8Y_URL": "https://t100.example.com", "CRA_C8Y_EXTERNAL_ID": "gw-042",
                   "CRA_BOOTSTRAP_CREDENTIALS_FILE": "/etc/cra-agent/credentials"}
    assert instance["user"] == ["cra-agent"]
    # procd gives up on an instance only while its retry count is above 0 (service/instance.c,
    # instance_exit): 0 respawns for ever, each 5 s after the exit.
    assert instance["respawn"] == ["3600", "5", "0"]
    assert int(instance["term_timeout"][0]) >= STOP_WAIT + 5
    # stderr to logd (a traceback, a bad INI file); stdout unused, so not piped (nor libsetlbf preloaded).
    assert instance["stderr"] == ["1"] and "stdout" not in instance
    assert "reload_signal" not in instance
    assert service["triggers"] == [["cra-agent"]]
    assert ("chown", "-R", "cra-agent", "/etc/cra-agent") in calls[:calls.index(("open_instance",))]

    # The agent's own parser and loader take what procd will run: not in the foreground, so the
    # log goes where the INI file says, syslog as shipped, and UCI's values win over the file.
    args = parse_args(instance["command"][1:])
    assert (args.foreground, args.config) == (False, "/etc/cra-agent/cra-agent.conf")
    config = load(TOP / "etc" / "cra-agent.conf", environ={**env, "CRA_BOOTSTRAP_PASSWORD": "secret"})
    assert config.log.destination == "syslog"
    assert (config.cloud.url, config.external_id) == ("https://t100.example.com", "gw-042")


def test_the_user_comes_from_uci_and_owns_the_agents_directory(device):
    device.configure(user="root")
    calls = device.init("start", running=False)
    assert only_instance(calls)["user"] == ["root"]
    assert ("chown", "-R", "root", "/etc/cra-agent") in calls


def test_a_disabled_agent_is_handed_to_procd_with_no_instance_so_procd_stops_it(device):
    device.configure(enabled=0)
    assert sent_to_procd(device.init("start")) == [{"instances": [], "triggers": [["cra-agent"]]}]


def test_reload_signals_the_running_agent_first_and_gives_procd_the_same_instance_when_uci_is_unchanged(device):
    started = only_instance(device.init("start", running=False))
    calls = device.init("reload")
    assert calls[0] == ("signal", "cra-agent", "*", "HUP")
    assert only_instance(calls) == started  # procd leaves the agent running: the SIGHUP did it


def test_reload_after_a_uci_change_gives_procd_an_instance_it_restarts(device):
    started = only_instance(device.init("start", running=False))
    device.configure(url="https://t200.example.com")
    calls = device.init("reload")
    assert calls[0] == ("signal", "cra-agent", "*", "HUP")
    reloaded = only_instance(calls)
    assert reloaded != started  # procd restarts an instance whose parameters changed
    assert environment(reloaded) == {**environment(started), "CRA_C8Y_URL": "https://t200.example.com"}
    assert {k: v for k, v in reloaded.items() if k != "env"} == {k: v for k, v in started.items() if k != "env"}


def test_a_stop_stops_but_not_during_an_upgrade(device):
    assert device.init("stop") == [("kill", "cra-agent", "")]
    assert device.init("stop", upgrade=False) == [("kill", "cra-agent", "")]
    assert device.init("stop", upgrade=True) == []


def test_a_start_during_an_upgrade_asks_the_running_agent_to_restart_when_idle_and_hands_procd_nothing(device):
    calls = device.init("start", upgrade=True, running=True)
    assert ("signal", "cra-agent", "*", "USR2") in calls
    assert sent_to_procd(calls) == []  # no instance procd would restart at once


def test_a_start_during_an_upgrade_with_no_agent_running_starts_it(device):
    calls = device.init("start", upgrade=True, running=False)
    assert not [call for call in calls if call[0] == "signal"]
    assert only_instance(calls)["command"][0] == "/usr/bin/cra-agent"


class Package:
    """The .ipk's control files as opkg keeps them (/usr/lib/opkg/info/cra-agent.*) on a Device."""

    def __init__(self, device, ipk):
        self.device = device
        info = device.root / "usr" / "lib" / "opkg" / "info"
        info.mkdir(parents=True)
        for name, content in ipk_parts(ipk)[1].items():
            (info / f"cra-agent.{name}").write_bytes(content)
        self.info = info

    def script(self, name, *args, **options):
        return self.device.calls(str(self.info / f"cra-agent.{name}"), *args, **options)


def test_opkg_install_makes_the_user_enables_and_starts(device, ipk):
    calls = Package(device, ipk).script("postinst", "configure", upgrade=False, running=False)
    assert calls[0] == ("add_group_and_user", "cra-agent:cra-agent")
    assert ("enable",) in calls
    assert only_instance(calls)["user"] == ["cra-agent"]


def test_opkg_upgrade_with_the_agent_running_leaves_it_running_and_sends_sigusr2(device, ipk):
    """opkg (libopkg/opkg_install.c, pkg.c) runs, with PKG_UPGRADE=1: the old package's
    `prerm upgrade <new version>`, the new `preinst upgrade <old version>` (none here), the old
    `postrm upgrade <new version>` (none here), then the new `postinst configure`."""
    package = Package(device, ipk)
    assert package.script("prerm", "upgrade", "0.2.0", upgrade=True) == []
    calls = package.script("postinst", "configure", upgrade=True)
    assert ("signal", "cra-agent", "*", "USR2") in calls
    assert ("enable",) not in calls and not [call for call in calls if call[0] == "kill"]
    assert sent_to_procd(calls) == []


def test_opkg_remove_disables_and_stops(device, ipk):
    calls = Package(device, ipk).script("prerm", "remove", upgrade=False)
    assert calls == [("disable",), ("kill", "cra-agent", "")]


def test_apk_post_upgrade_with_the_agent_running_sends_sigusr2(device):
    """apk (apk-tools src/database.c, apk_db_install_pkg) runs only the new package's post-upgrade
    on an upgrade, with a cleared environment; OpenWrt's post-upgrade (include/package-pack.mk)
    exports PKG_UPGRADE=1 and runs add_group_and_user and default_postinst, whose start is this."""
    calls = device.init("start", upgrade=True, running=True)
    assert calls == [("open_service", "cra-agent", str(device.root / "etc" / "init.d" / "cra-agent")),
                     ("running", "cra-agent"), ("signal", "cra-agent", "*", "USR2")]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """(fields, {installed file: (content, mode)}) of the SDK recipe under GNU make."""
    need("make")
    tmp = tmp_path_factory.mktemp("sdk")
    (tmp / "rules.mk").write_text(RULES_MK)
    (tmp / "package.mk").write_text(PACKAGE_MK)
    root = tmp / "root"
    result = run("make", "--no-print-directory", "-C", str(RECIPE), f"TOPDIR={tmp}", f"INCLUDE_DIR={tmp}",
                 f"BUILD_DIR={tmp / 'build'}", f"DESTDIR={root}", "fields", "install")
    assert result.returncode == 0, result.stdout + result.stderr
    fields = dict(line.split("=", 1) for line in result.stdout.splitlines() if re.match(r"^[A-Z]+=", line))
    installed = {str(path.relative_to(root)): (path.read_bytes(), path.stat().st_mode & 0o7777)
                 for path in sorted(root.rglob("*")) if path.is_file()}
    return fields, installed


def test_the_sdk_recipe_has_the_ipks_version_depends_user_and_conffiles(recipe, ipk):
    fields, _ = recipe
    control, control_files, _ = ipk_parts(ipk)
    assert fields["VERSION"] == f"{VERSION}-1"
    assert [dep.lstrip("+") for dep in fields["DEPENDS"].split()] == control["Depends"].split(", ")
    assert fields["USERID"] == control["Require-User"]
    assert (fields["PKGARCH"], fields["LICENSE"]) == ("all", control["License"])
    assert fields["CONFFILES"].split() == control_files["conffiles"].decode().split()


def test_the_sdk_recipe_installs_what_the_ipk_holds(recipe, ipk):
    _, installed = recipe
    assert installed == ipk_parts(ipk)[2]


def test_the_sdk_recipe_needs_no_more_than_the_checkout(tmp_path):
    """The recipe copied out of the checkout (into an SDK's own feed) finds it through CRA_SOURCE."""
    need("make")
    (tmp_path / "rules.mk").write_text(RULES_MK)
    (tmp_path / "package.mk").write_text(PACKAGE_MK)
    copy = tmp_path / "feed" / "cra-agent"
    shutil.copytree(RECIPE, copy)
    result = run("make", "--no-print-directory", "-C", str(copy), f"TOPDIR={tmp_path}", f"INCLUDE_DIR={tmp_path}",
                 f"CRA_SOURCE={TOP}", "fields")
    assert result.returncode == 0, result.stderr
    assert f"VERSION={VERSION}-1" in result.stdout.splitlines()
