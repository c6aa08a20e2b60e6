"""The platform's remote access in the browser (issue 15): cra-cloud's page /apps/remote-access/ in
Debian's Chromium (headless, driven by Playwright), against the real cra-cloud and the real agent,
with real servers behind the gateway: x11vnc on Xvfb, busybox's telnetd, OpenSSH's sshd.

Screenshots of every run are kept in build/test-artifacts/browser/<test>/ (docs/cloud.md, "The web page").
"""
import re

import asyncssh
import pytest

from cra.cloud.demo_targets import LocalSshd
from toolkit.browser import Browser, need_chromium, need_library, sign_in
from toolkit.console import PtyConsole
from toolkit.desktop import (ROOT_COLOUR, VNC_PASSWORD, WINDOW_COLOUR, colour_at, desktop, near, telnet_server)
from toolkit.images import Png
from toolkit.platform import add_configuration
from toolkit.waiting import wait_until

# Where on the VNC screen each colour is: the xterm's 60x12 characters cover the top left, the root the rest.
IN_WINDOW = (100, 60)
ON_ROOT = (700, 500)


@pytest.fixture
def browser(request):
    """Chromium with an empty profile; afterwards, nothing it asked for left 127.0.0.1."""
    need_chromium()
    instance = Browser(request.node.name)
    yield instance
    instance.close()
    assert not instance.strays, f"the page reached beyond 127.0.0.1: {instance.strays}"


@pytest.fixture
def vnc_desktop(tmp_path):
    need_library("novnc")
    started = desktop(tmp_path)
    yield started
    started.stop()


@pytest.fixture
def telnetd(tmp_path):
    need_library("xterm")
    started = telnet_server(tmp_path)
    yield started
    started.stop()


def open_session(browser, cloud, device, config):
    """Signed in, the device list, then the Open link of one configuration; the session page."""
    return open_from_list(sign_in(browser, cloud.url), device, config)


def open_from_list(page, device, config):
    page.click(f"section[data-device='{device}'] tr[data-config='{config}'] a")
    page.wait_for_url(re.compile(r"/apps/remote-access/devices/\d+/configurations/\d+$"))
    return page


def terminal_text(page):
    """The terminal's rows as text (xterm.js's DOM renderer draws a space as a no-break space)."""
    rows = page.evaluate("() => Array.from(document.querySelectorAll('.xterm-rows > div'), (row) => row.textContent)")
    return "\n".join(rows).replace("\xa0", " ")


def wait_for_terminal(page, pattern, browser, what):
    """The terminal's text once `pattern` matches it (bounded)."""
    def failed():
        browser.screenshot("terminal-when-the-wait-ran-out")
        return f"{what}: the terminal shows\n{terminal_text(page)}\n{browser.diagnosis()}"
    wait_until(lambda: re.search(pattern, terminal_text(page), re.M), failed)
    return terminal_text(page)


def run_a_command(page, browser):
    """Type a command in the page's terminal; the terminal's text once its output is there: 42, and
    the size the shell sees, which must be the terminal's own (rows as drawn, more columns than 80)."""
    page.locator(".xterm-helper-textarea").focus()
    page.keyboard.type("echo $((6*7)); stty size")
    page.keyboard.press("Enter")
    shown = wait_for_terminal(page, r"^\d+ \d+\s*$", browser, "the command's output")
    assert re.search(r"^42\s*$", shown, re.M), shown
    rows, cols = map(int, re.search(r"^(\d+) (\d+)\s*$", shown, re.M).groups())
    assert rows == page.locator(".xterm-rows > div").count() and cols > 80, (rows, cols)
    return shown


def close_and_see_the_tunnel_end(page, agent):
    """Closing the page ends the session's tunnel on the agent: its log says so."""
    tunnel = re.search(r"tunnel (\d+)", agent.wait_for_log(r"tunnel \d+ open")).group(1)
    page.close()
    agent.wait_for_log(rf"tunnel {tunnel} closed")


def test_sign_in_shows_the_tenants_devices_and_their_configurations(cloud, browser):
    """A wrong password is refused with the platform's words; the right one shows every device of the
    user's tenant (not another tenant's) with its configurations; those a browser opens have a link."""
    page = browser.page
    page.goto(f"{cloud.url}/apps/remote-access/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", "wrong")
    page.click("button[type=submit]")
    page.wait_for_selector("#sign-in-error:has-text('Sign-in failed')")
    assert "Invalid credentials" in page.inner_text("#sign-in-error")
    browser.screenshot("wrong-password")

    page = sign_in(browser, cloud.url)
    assert page.inner_text("#who") == "signed in as admin"
    assert page.inner_text("#devices-status") == "2 devices", browser.diagnosis()
    gw1 = page.locator("section[data-device='gw-001']")
    assert gw1.locator("tr[data-config='vnc']").inner_text().split("\t")[:3] == ["vnc", "VNC", "10.0.0.67:5900"]
    assert gw1.locator("tr[data-config='vnc'] a").get_attribute("href").startswith("/apps/remote-access/devices/")
    assert gw1.locator("tr[data-config='ssh'] a").count() == 0  # PASSTHROUGH: cra-connect's
    assert "cra-connect" in gw1.locator("tr[data-config='ssh']").inner_text()
    assert "No remote access configurations." in page.inner_text("section[data-device='gw-002']")
    assert "gw-900" not in page.inner_text("#device-list")  # tenant t200's
    browser.screenshot("devices")


def test_vnc_session_shows_the_display_and_takes_keystrokes(cloud, make_agent, browser, vnc_desktop):
    """noVNC in the page speaks RFB through the cloud and the agent to x11vnc: it asks for the VNC
    password (cra-cloud never hands it out), the canvas shows the display's known colours where they
    are, keys typed in the page reach the xterm on the display, and closing the page ends the tunnel."""
    agent = make_agent(cloud)
    device_id = cloud.device_id()
    add_configuration(cloud, device_id, "127.0.0.1", vnc_desktop.port, name="desktop", protocol="VNC",
                      credentialsType="PASS_ONLY", credentials={"password": VNC_PASSWORD})
    page = open_session(browser, cloud, "gw-001", "desktop")
    page.wait_for_selector("#credentials:not([hidden])")
    assert page.locator("#username-field").is_hidden()  # VNC authentication asks for a password only
    page.fill("#credentials input[name=password]", VNC_PASSWORD)
    page.click("#credentials button")
    page.wait_for_selector("#state:has-text('connected')")
    canvas = page.locator("#screen canvas")
    box = canvas.bounding_box()
    assert (box["width"], box["height"]) == tuple(vnc_desktop.size), box

    def shown(point):
        return colour_at(page, box["x"] + point[0], box["y"] + point[1])
    wait_until(lambda: near(shown(IN_WINDOW), WINDOW_COLOUR) and near(shown(ON_ROOT), ROOT_COLOUR),
               lambda: f"the display's colours on the canvas (window {shown(IN_WINDOW)}, root {shown(ON_ROOT)})")
    screen = Png(browser.screenshot("vnc", canvas))
    assert near(screen.pixel(*IN_WINDOW), WINDOW_COLOUR) and near(screen.pixel(*ON_ROOT), ROOT_COLOUR)

    page.mouse.click(box["x"] + IN_WINDOW[0], box["y"] + IN_WINDOW[1])  # X gives the keys to the window under the pointer
    page.keyboard.type("typed-over-vnc")
    page.keyboard.press("Enter")
    wait_until(lambda: vnc_desktop.typed.exists() and vnc_desktop.typed.read_text() == "typed-over-vnc\n",
               lambda: f"the keys in the xterm's file ({vnc_desktop.typed.read_text() if vnc_desktop.typed.exists() else 'none'})")

    def echoed():  # the xterm's first line, inside its border, has dark pixels: the echo drawn and sent back
        line = Png(page.screenshot(clip={"x": box["x"] + 4, "y": box["y"] + 4, "width": 80, "height": 10}))
        return any(sum(line.pixel(x, y)) < 200 for x in range(line.width) for y in range(line.height))
    wait_until(echoed, "the typed line on the VNC canvas")
    browser.screenshot("vnc-page")

    close_and_see_the_tunnel_end(page, agent)


def test_vnc_wrong_password_is_refused_in_words(cloud, make_agent, browser, vnc_desktop):
    """A wrong VNC password ends in the page saying the VNC server refused the session."""
    make_agent(cloud)
    add_configuration(cloud, cloud.device_id(), "127.0.0.1", vnc_desktop.port, name="desktop", protocol="VNC")
    page = open_session(browser, cloud, "gw-001", "desktop")
    page.fill("#credentials input[name=password]", "not-it")
    page.click("#credentials button")
    page.wait_for_selector("#problem:not([hidden])")
    assert page.inner_text("#problem").startswith("The VNC server refused the session:"), page.inner_text("#problem")
    browser.screenshot("vnc-refused")


def test_telnet_terminal_runs_a_command_and_closing_the_page_ends_the_tunnel(cloud, make_agent, browser, telnetd):
    """xterm.js over telnet to busybox's telnetd: the greeting shows with no telnet commands in it, a
    typed command's output appears, the shell learns the terminal's size (NAWS); closing the page
    closes the tunnel on the agent."""
    agent = make_agent(cloud)
    add_configuration(cloud, cloud.device_id(), "127.0.0.1", telnetd.port, name="console", protocol="TELNET")
    page = open_session(browser, cloud, "gw-001", "console")
    wait_for_terminal(page, r"cra demo telnet target", browser, "the telnet greeting")
    shown = run_a_command(page, browser)
    assert "\ufffd" not in shown and "\xff" not in shown  # no telnet command shown as text
    browser.screenshot("telnet")

    close_and_see_the_tunnel_end(page, agent)


def test_a_serial_console_in_telnet_mode_in_the_page(cloud, make_agent, browser):
    """A gateway's serial console ([serial:NAME] mode = telnet, a pty here) in the page's terminal: the
    agent's telnet side and the page's negotiate, and what is typed reaches the line byte for byte, in
    binary mode (no NUL after a CR), while what the device says shows with no telnet in it."""
    need_library("xterm")
    console = PtyConsole()
    agent = make_agent(cloud, options={"serial:plc": {"target": "127.0.0.1:7001", "url": console.url, "mode": "telnet"}})
    add_configuration(cloud, cloud.device_id(), "127.0.0.1", 7001, name="plc-console", protocol="TELNET")
    page = open_session(browser, cloud, "gw-001", "plc-console")
    page.wait_for_selector("#state:has-text('connected')")
    agent.wait_for_log(r"tunnel \d+ open: serial port")
    console.write(b"PLC ready\r\n> ")
    wait_for_terminal(page, r"^> ", browser, "the device's prompt")
    page.locator(".xterm-helper-textarea").focus()
    page.keyboard.type("status")
    page.keyboard.press("Enter")
    assert console.read(len(b"status\r")) == b"status\r"
    console.write(b"\r\nRUN 42\r\n> ")
    shown = wait_for_terminal(page, r"^RUN 42\s*$", browser, "the device's answer")
    assert "\ufffd" not in shown and "\xff" not in shown, shown
    page.keyboard.type("q")
    page.keyboard.press("Enter")
    assert console.read(2) == b"q\r", "nothing between the lines: no NUL after a CR"
    browser.screenshot("serial-console")
    page.close()
    agent.wait_for_log(r"tunnel \d+ closed: serial port")
    console.hang_up()


def ssh_configuration(cloud, sshd, name, **credentials):
    """An SSH configuration for the test's sshd that logs in with its key, unless `credentials` say otherwise."""
    credentials = credentials or {"username": sshd.user, "privateKey": open(sshd.key).read()}
    add_configuration(cloud, cloud.device_id(), "127.0.0.1", sshd.port, name=name, protocol="SSH",
                      credentialsType="USER_PASS" if "password" in credentials else "KEY_PAIR", credentials=credentials)


needs_sshd = pytest.mark.skipif(not LocalSshd.available(), reason="OpenSSH server not installed (make test installs it)")


@needs_sshd
def test_ssh_terminal_runs_a_command_and_closing_the_page_ends_the_tunnel(cloud, make_agent, browser, sshd):
    """xterm.js on cra-cloud's SSH terminal (cra-cloud the SSH client, logging in to a real sshd with the
    configuration's key): a typed command's output appears, the shell has the page's terminal size;
    closing the page closes the tunnel on the agent."""
    need_library("xterm")
    agent = make_agent(cloud)
    ssh_configuration(cloud, sshd, "shell")
    page = open_session(browser, cloud, "gw-001", "shell")
    page.wait_for_selector("#state:has-text('connected')")
    wait_for_terminal(page, r"[#$]\s*$", browser, "the shell's prompt")  # typed sooner, it echoes into the banner
    run_a_command(page, browser)
    browser.screenshot("ssh")

    close_and_see_the_tunnel_end(page, agent)


@needs_sshd
def test_ssh_refusals_are_shown_in_words(cloud, make_agent, browser, sshd):
    """What cra-cloud's SSH client refuses reaches the page as a sentence: a wrong password, and a host
    key that is not the configuration's."""
    make_agent(cloud)
    ssh_configuration(cloud, sshd, "wrong-password", username=sshd.user, password="not-the-password")
    ssh_configuration(cloud, sshd, "changed-host-key", username=sshd.user, privateKey=open(sshd.key).read(),
                      hostKey=asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip())
    expected = {"wrong-password": f"The SSH session failed: SSH authentication failed for user {sshd.user}: "
                                  "the configuration's password was refused",
                "changed-host-key": f"The SSH session failed: the host key of 127.0.0.1:{sshd.port} changed: expected "}
    page = sign_in(browser, cloud.url)
    for name, sentence in expected.items():
        page.goto(f"{cloud.url}/apps/remote-access/")
        open_from_list(page, "gw-001", name)
        page.wait_for_selector("#problem:not([hidden])")
        assert page.inner_text("#problem").startswith(sentence), page.inner_text("#problem")
        browser.screenshot(name)


def test_telnet_negotiation_in_the_page(cloud, browser):
    """The page's telnet (static/telnet.js), fed byte by byte as frames may split it: it agrees to
    what a terminal needs once, refuses the rest, sends its size, shows 0xFF once, and doubles it and
    pads CR when it sends."""
    page = browser.page
    page.goto(f"{cloud.url}/apps/remote-access/")
    result = page.evaluate("""async () => {
        const { Telnet } = await import("/apps/remote-access/static/telnet.js");
        const sent = [];
        const telnet = new Telnet((bytes) => sent.push(Array.from(bytes)), () => [300, 40]);
        const typedAsText = Array.from(telnet.encode(Uint8Array.of(255, 13, 65, 13, 10)));
        const wire = [255, 251, 1, 255, 251, 1, 255, 253, 24, 104, 255, 255, 105, 255, 250, 24, 1, 255, 240,
                      255, 253, 31, 255, 251, 3, 255, 253, 0, 33];
        const shown = wire.flatMap((byte) => Array.from(telnet.receive([byte])));
        const typedInBinary = Array.from(telnet.encode(Uint8Array.of(255, 13)));
        return { sent, shown, typedAsText, typedInBinary };
    }""")
    assert result["sent"] == [
        [255, 253, 1],  # WILL ECHO -> DO ECHO, once: the second WILL ECHO gets no answer
        [255, 252, 24],  # DO TERMINAL-TYPE -> WONT
        [255, 251, 31], [255, 250, 31, 1, 44, 0, 40, 255, 240],  # DO NAWS -> WILL NAWS, then 300 x 40
        [255, 253, 3],  # WILL SGA -> DO SGA
        [255, 251, 0],  # DO BINARY -> WILL BINARY
    ], result
    assert bytes(result["shown"]) == b"h\xffi!", result
    assert bytes(result["typedAsText"]) == b"\xff\xff\r\0A\r\n", result  # a bare CR padded with NUL outside binary mode
    assert bytes(result["typedInBinary"]) == b"\xff\xff\r", result


def test_a_missing_library_is_named_with_its_package(make_cloud, browser):
    """Where noVNC is not installed, the VNC page says which Debian package to install."""
    cloud = make_cloud(args=["--novnc-dir", "/nonexistent/novnc"])
    page = open_session(browser, cloud, "gw-001", "vnc")
    page.wait_for_selector("#problem:not([hidden])")
    assert "install Debian's package novnc" in page.inner_text("#problem"), page.inner_text("#problem")
