"""cra-agent's two ways of learning of a session, side by side (issue 11): `[agent] operations =
notifications` (its default: a Bayeux long poll the cloud holds until an operation comes) against
`operations = polling` at the default poll_interval of 5 s.

Two figures for each mode, over ws and over wss:
  - set-up time: the user's connection (which creates the operation) to the first byte at the
    target, for `setup_samples` sessions at random points of the poll cycle, as users click;
  - idle traffic: what crosses the wire between the agent and the cloud while no one connects,
    counted by bench/wire.py's relays:
        ws:   agent --> relay (HTTP) --> cra-cloud
        wss:  agent --> relay (TLS) --> stunnel --> relay (HTTP) --> cra-cloud
    so a wss agent's HTTP requests and bytes are read inside the TLS and its TLS bytes outside it.
The idle agents run on a cra-cloud of their own that holds a connect `idle_hold` seconds, not the
platform's 5400: a whole number of connect cycles fits in a window of minutes, and the report
scales a cycle to the default hold. They run while the set-up figures are taken, on the other
cloud, so the two figures cost the time of one.
"""
import re
import time

from bench.rig import Cloud, WebSocketSide, agent_program
from bench.traffic import ping_pong, setup_samples
from bench.wire import WireRelay

MODES = ("notifications", "polling")
TRANSPORTS = ("ws", "wss")
POLL_INTERVAL = 5.0  # s: the agent's default poll_interval, the one issue 11 compares with
KEEPALIVE_IDLE = 30.0  # s: the agent's default [c8y] keepalive, silence before its first probe
STEADY = {"notifications": "/meta/connect", "polling": "GET /devicecontrol/operations"}  # the request an idle agent repeats
FEED_LINE = re.compile(r"operations: |notifications", re.IGNORECASE)


def setup_figures(plan, workdir, cloud, target, rng, wait_closed):
    """{transport: {mode: [seconds, ...]}}: set-up times, `plan["feed_samples"]` sessions each; and
    {transport: {mode: [the agent's log lines about its feed]}}, to show which way it really took."""
    times, logs = {}, {}
    for transport in TRANSPORTS:
        times[transport], logs[transport] = {}, {}
        for mode in MODES:
            print(f"[feed] set-up over {transport}, operations = {mode}", flush=True)
            side = WebSocketSide("cra-agent", workdir, cloud, transport == "wss", POLL_INTERVAL, 20, operations=mode,
                                 device=f"gw-setup-{mode}-{transport}")
            try:
                ping_pong(side.connect, 1, 1, 10)  # signed in, registered, listening, and its first tunnel done
                # with notifications, the random waits put clicks at random times since the last connect
                times[transport][mode] = setup_samples(side.connect, target, POLL_INTERVAL, plan["feed_samples"], rng)
                wait_closed(target, side)
            finally:
                side.stop()
            logs[transport][mode] = feed_lines(side.programs[0].log_path)
    return times, logs


class IdleAgent:
    """One agent left alone behind the counting relays (and, for wss, its own stunnel)."""

    def __init__(self, workdir, cloud, mode, transport):
        self.mode, self.transport = mode, transport
        external_id = f"gw-idle-{mode}-{transport}"
        self.http = WireRelay(cloud.port, http=True)
        self.tls, self.front = None, None
        try:
            if transport == "wss":
                self.front, front_port = cloud.tls_front(f"{external_id}-stunnel", self.http.port)
                self.tls = WireRelay(front_port, http=False)
                url, ca_file = f"https://127.0.0.1:{self.tls.port}", str(cloud.ca_file)
            else:
                url, ca_file = f"http://127.0.0.1:{self.http.port}", None
            self.started = time.monotonic()
            self.program = agent_program(workdir, external_id, url, external_id, ca_file, {"operations": mode})
        except BaseException:
            self.stop()
            raise

    @property
    def outer(self):
        """The relay next to the agent: its segment counts are the agent's packets."""
        return self.tls or self.http

    def stop(self):
        if getattr(self, "program", None):
            self.program.stop()
        if self.front:
            self.front.stop()
        for relay in (self.tls, self.http):
            if relay:
                relay.close()


def start_idle(plan, workdir, target_port):
    """The short-hold cloud and one idle agent per mode and transport, all started at once."""
    cloud = Cloud(workdir, target_port, name="cra-cloud-hold", options=["--notification-hold", f"{plan['idle_hold']:g}"])
    agents = []
    try:
        for transport in TRANSPORTS:
            for mode in MODES:
                agents.append(IdleAgent(workdir, cloud, mode, transport))
    except BaseException:
        stop_idle(cloud, agents)
        raise
    print(f"[feed] idle agents started behind counting relays (notification hold {plan['idle_hold']:g} s)", flush=True)
    return cloud, agents


def stop_idle(cloud, agents):
    for agent in agents:
        agent.stop()
    cloud.stop()


def idle_seconds_needed(plan):
    """How long after start_idle() the idle figures can be cut: the settling, half a period, the
    window of whole periods, and one more period of margin for the requests' own time."""
    period = max(plan["idle_hold"], POLL_INTERVAL)
    return plan["idle_settle"] + period / 2 + plan["idle_window"] + 2 * period


def idle_figures(plan, agents):
    """{transport: {mode: figures}}, once idle_seconds_needed() have passed since they started
    (waits for what is left of it). The window of each agent begins half a period after one of
    its repeated requests, where the line is quiet, at least `idle_settle` s after it started
    (cra-cloud closes an idle REST connection after 75 s: that is start-up, not idleness), and
    spans whole periods (connect cycles, or polls)."""
    deadline = min(a.started for a in agents) + idle_seconds_needed(plan)
    while time.monotonic() < deadline:
        time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
    figures = {transport: {} for transport in TRANSPORTS}
    for agent in agents:
        figures[agent.transport][agent.mode] = agent_window(plan, agent)
    return figures


def agent_window(plan, agent):
    steady = agent.http.request_times(STEADY[agent.mode])
    gaps = sorted(b - a for a, b in zip(steady[1:], steady[2:]))  # the first is the start-up's
    figures = {"steady_request": STEADY[agent.mode], "log": feed_lines(agent.program.log_path),
               "hold": plan["idle_hold"] if agent.mode == "notifications" else None}
    anchors = [t for t in steady[1:] if t >= agent.started + plan["idle_settle"]]
    if not gaps or not anchors:
        figures["error"] = (f"too few {STEADY[agent.mode]} requests to cut a window: {len(steady)} in "
                            f"{time.monotonic() - agent.started:.0f} s (see the agent's log)")
        return figures
    period = gaps[len(gaps) // 2]
    periods = max(1, round(plan["idle_window"] / period))
    start = anchors[0] + period / 2
    end = start + periods * period
    figures.update(period=period, periods=periods, seconds=end - start, start_after=start - agent.started,
                   http=agent.http.window(start, end), tls=agent.tls.window(start, end) if agent.tls else None,
                   wire=agent.outer.window(start, end), quiet=agent.outer.quiet(KEEPALIVE_IDLE))
    return figures


def feed_lines(log_path):
    """The agent's log lines about where its operations come from (notifications or polling, and
    any fallback), and its warnings and errors."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line for line in lines if FEED_LINE.search(line) or " WARNING " in line or " ERROR " in line][:20]
