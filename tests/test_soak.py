"""Soak (issue 13): many tunnels through one real agent and a real cra-cloud to an echo server on
127.0.0.1, a thousand one after another, then a hundred at once; after each phase the agent must be
back where it started: its descriptors and threads exactly, its memory within a stated bound.

Every loop is bounded in count and in time. Marked `soak`: `pytest -m soak` runs it alone.
"""
import time

import pytest

from toolkit.middleboxes import CloudRelay
from toolkit.servers import EchoServer
from toolkit.sockets import open_fds, rss_kib, threads_of, ws_recv_exactly
from toolkit.waiting import in_parallel, wait_until

pytestmark = pytest.mark.soak

SEQUENTIAL = 1000
CONCURRENT = 100
WARM_UP = 10
# How far the agent's resident memory may be above the baseline after each phase. A tunnel costs
# about 46 KiB while open (docs/BENCHMARKS.md); a leak of 8 KiB per tunnel, a sixth of that, would
# pass 8 MiB within the thousand sequential ones. The rest is room for what the allocator keeps once
# a hundred tunnels' threads have come and gone (glibc's cache of thread stacks, its per-thread
# malloc arenas), reused rather than returned: measured here, +0.4 MiB after the thousand in turn,
# +4.2 MiB after the hundred at once, and fourteen more rounds of a hundred added 1.6 MiB between
# them, less each round, as retention does and a leak does not.
RSS_BOUND_KIB = 8 * 1024
SETTLE_TIMEOUT = 20
SEQUENTIAL_BUDGET = 90
CLIENT_TIMEOUT = 20


class Soak:
    """The agent under test and how a user reaches the echo server through it."""

    def __init__(self, cloud, agent, tap, config_id):
        self.cloud, self.agent, self.tap, self.config_id = cloud, agent, tap, config_id
        self.device_id = cloud.device_id()
        self.tunnels = 0

    def footprint(self):
        """(descriptors but the agent's REST sockets, threads, resident KiB) of the agent."""
        pid = self.agent.proc.pid
        return open_fds(pid, except_connections=self.tap.rest), threads_of(pid), rss_kib(pid)

    def open(self, payload):
        """A user's tool through a new tunnel, once `payload` has come back through it."""
        client = self.cloud.open_client(self.device_id, self.config_id)
        client.settimeout(CLIENT_TIMEOUT)
        client.send_binary(payload)
        assert ws_recv_exactly(client, len(payload)) == payload
        return client

    def closed_count(self):
        return self.agent.log().count(" closed: ")

    def settle(self, opened, baseline, phase, rss_bound=RSS_BOUND_KIB):
        """Wait (bounded) until every tunnel opened so far has closed and the agent's descriptors and
        threads are those of `baseline`; the footprint then, with what it was measured against."""
        self.tunnels += opened
        wait_until(lambda: self.closed_count() == self.tunnels,
                   lambda: f"{phase}: all tunnels closing ({self.closed_count()} of {self.tunnels})", SETTLE_TIMEOUT)

        def described(now):
            return (f"{phase}: baseline {baseline[0]} fds, {baseline[1]} threads, {baseline[2]} KiB RSS; "
                    f"after {now[0]} fds, {now[1]} threads, {now[2]} KiB RSS (+{now[2] - baseline[2]} KiB)")

        wait_until(lambda: self.footprint()[:2] == baseline[:2],
                   lambda: f"descriptors and threads back to the baseline's ({described(self.footprint())})", SETTLE_TIMEOUT)
        now = self.footprint()
        figures = described(now)
        print(figures)
        if rss_bound is not None:
            assert now[2] <= baseline[2] + rss_bound, f"{figures}: more than {rss_bound} KiB over the baseline"
        return now


def test_a_thousand_tunnels_in_turn_then_a_hundred_at_once_leave_the_agent_as_it_was(cloud, make_agent):
    """Sequential: connect, one echo, close, a thousand times (within SEQUENTIAL_BUDGET). Concurrent: a
    hundred users connect at once, each echoes while all are open, then all close. The agent reaches
    the cloud through a CloudRelay so that its REST sockets (a keep-alive pool that grows with concurrent
    requests) are told from its tunnels' and not counted."""
    server = EchoServer()
    tap = CloudRelay(cloud.url)
    try:
        agent = make_agent(cloud, options={"c8y": {"url": tap.url}, "agent": {"max_tunnels": str(CONCURRENT + 20)}})
        answer = cloud.api().post(f"/service/remoteaccess/devices/{cloud.device_id()}/configurations",
                                  json={"name": "echo", "hostname": "127.0.0.1", "port": server.port})
        assert answer.status_code == 201, answer.text
        agent.wait_for_log(r"operations: real-time notifications from")
        soak = Soak(cloud, agent, tap, answer.json()["id"])

        # A few tunnels of both kinds first: what the agent loads and sets up once (modules, the REST
        # pool) is then in the RSS baseline, and what is measured is what tunnels keep. Its descriptors
        # and threads must already come back to those of the idle agent.
        idle = soak.footprint()
        for index in range(WARM_UP):
            soak.open(b"warm %d" % index).close()
        for client in in_parallel(lambda index: soak.open(b"warm %d" % index), WARM_UP):
            client.close()
        baseline = soak.settle(2 * WARM_UP, idle, f"{2 * WARM_UP} warm-up tunnels", rss_bound=None)

        started = time.monotonic()
        for index in range(SEQUENTIAL):
            assert time.monotonic() - started < SEQUENTIAL_BUDGET, \
                f"only {index} of {SEQUENTIAL} sequential tunnels within {SEQUENTIAL_BUDGET} s"
            soak.open(b"tunnel %d" % index).close()
        sequential_seconds = time.monotonic() - started
        soak.settle(SEQUENTIAL, baseline, f"{SEQUENTIAL} sequential tunnels in {sequential_seconds:.1f} s")

        started = time.monotonic()
        clients = in_parallel(lambda index: soak.open(b"tunnel %d" % index), CONCURRENT, timeout=60)
        peak = soak.footprint()  # all open at once: each holds two sockets (target, WebSocket) and two threads
        assert peak[0] >= baseline[0] + 2 * CONCURRENT and peak[1] >= baseline[1] + 2 * CONCURRENT, \
            f"{CONCURRENT} tunnels open: {peak} against the baseline {baseline}"
        in_parallel(lambda index: clients[index].close(), CONCURRENT, timeout=60)
        concurrent_seconds = time.monotonic() - started
        print(f"{CONCURRENT} concurrent tunnels open: {peak[0]} fds, {peak[1]} threads, {peak[2]} KiB RSS")
        soak.settle(CONCURRENT, baseline, f"{CONCURRENT} concurrent tunnels in {concurrent_seconds:.1f} s")
        assert agent.proc.poll() is None and "Traceback" not in agent.log()
    finally:
        tap.close()
        server.close()
