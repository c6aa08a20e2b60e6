"""What a browser test puts behind the gateway, from make run's own targets (cra/cloud/demo_targets.py):
a VNC desktop in known colours whose xterm writes what is typed to a file, and busybox's telnetd;
each skipped, naming the Debian packages, where they are missing; and colours read off the page."""
import pytest

from cra.cloud.demo_targets import TelnetServer, VirtualDesktop
from toolkit.images import Png, hex_colour

VNC_PASSWORD = "vnc-pw42"  # VNC passwords are 8 characters at most
ROOT_COLOUR = "#2e7d32"  # the root window: green
WINDOW_COLOUR = "#ffb300"  # the xterm at the top left: amber


def _need(missing):
    if missing:
        pytest.skip(f"Debian packages missing: {', '.join(missing)} (make browser-tools, which make test runs, installs them)")


def desktop(tmp_path):
    """A started VirtualDesktop; what is typed into its xterm goes to desktop.typed (a Path)."""
    _need(VirtualDesktop.missing())
    typed = tmp_path / "typed.txt"
    started = VirtualDesktop(str(tmp_path), VNC_PASSWORD, ROOT_COLOUR, WINDOW_COLOUR,
                             command=f"exec cat > {typed}").start()
    started.typed = typed
    return started


def telnet_server(tmp_path):
    _need(TelnetServer.missing())
    return TelnetServer(str(tmp_path), login="/bin/sh").start()


def colour_at(page, x, y):
    """The (r, g, b) the page shows at x, y (CSS pixels), from a screenshot of that one pixel."""
    return Png(page.screenshot(clip={"x": x, "y": y, "width": 1, "height": 1})).pixel(0, 0)


def near(colour, expected, tolerance=8):
    """Whether a colour is `expected` ('#rrggbb'), give or take what compression may shift."""
    return all(abs(a - b) <= tolerance for a, b in zip(colour, hex_colour(expected)))

