"""make bench: cra-agent beside the official DeviceProxy, websocat and a plain Python relay, in one run.

    python -m bench [--quick] [--out DIR]

Writes DIR/BENCHMARKS.md (between its bench markers; the text around them is kept) and
DIR/bench/*.png and results.json; DIR is docs/ (build/bench/ with --quick, a short run for
development whose numbers are not worth keeping). Every loop is bounded in count and time and
all traffic stays on 127.0.0.1; see docs/BENCHMARKS.md for what each figure means.
"""
import argparse
import os
import platform
import random
import ssl
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import psutil

from bench import feed, report
from bench.rig import DEVICES, ROOT, WSACCEL, Cloud, Direct, Floor, WebSocketSide, usage
from bench.traffic import Target, open_tunnels, ping_pong, setup_samples, stream

# feed_*, idle_*: notifications against polling (bench/feed.py): set-up sessions per mode and
# transport; the idle cloud's connect hold, the idle window and the settling before it, in seconds.
FULL = dict(runs=3, warmup=0.5, window=2.0, rounds=1000, rtt_limit=3.0, ladder=(1, 10, 100),
            scale_window=3.0, poll=0.2, setup_polls=(0.05, 0.5, 2.0), setup_samples=8,
            feed_samples=20, idle_hold=20.0, idle_window=120.0, idle_settle=90.0)
QUICK = dict(runs=1, warmup=0.3, window=1.0, rounds=200, rtt_limit=1.0, ladder=(1, 10, 20),
             scale_window=1.0, poll=0.2, setup_polls=(0.05, 0.5), setup_samples=3,
             feed_samples=5, idle_hold=5.0, idle_window=10.0, idle_settle=0.0)
SETTLE = 1.0  # seconds for a device side to settle before its memory is read
SIZES = (1, 64)
POLLING = ("cra-agent", "DeviceProxy", "websocat")  # the sides with their own crowd and set-up figures
WARNINGS = []  # what went wrong in the run without stopping it; printed in the report


def main(argv=None):
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run for development")
    parser.add_argument("--out", type=Path, help="where BENCHMARKS.md and bench/ go (default: docs, or build/bench with --quick)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    out = args.out or ROOT / ("build/bench" if args.quick else "docs")
    workdir = Path(tempfile.mkdtemp(prefix="cra-bench-"))
    results = {"plan": plan, "quick": args.quick, "machine": machine(), "command": "make bench" + (" QUICK=1" if args.quick else "")}
    began, load_before, system_before = time.monotonic(), os.getloadavg(), _busy(psutil.cpu_times())
    target = Target()
    cloud = None
    try:
        cloud = Cloud(workdir, target.port)
        for tls in (False, True):
            results["wss" if tls else "ws"] = transport(plan, workdir, cloud, target, tls)
        results["setup"] = setup_times(plan, workdir, cloud, target)
        results["feed"] = feed_figures(plan, workdir, cloud, target)
    finally:
        if cloud:
            cloud.stop()
        target.close()
    mine = psutil.Process().cpu_times()
    results["warnings"] = WARNINGS
    results["load"] = {"loadavg_before": load_before, "loadavg_after": os.getloadavg(), "seconds": time.monotonic() - began,
                       "other_cpu": _busy(psutil.cpu_times()) - system_before - sum(mine[:4])}
    report.write(results, out)
    print(f"wrote {out / 'BENCHMARKS.md'} in {time.monotonic() - began:.0f} s; the processes' logs are in {workdir}")


def transport(plan, workdir, cloud, target, tls):
    """Every figure but set-up times, for every side, over ws:// or wss:// (the device's leg)."""
    label = "wss" if tls else "ws"
    print(f"[{label}] starting the device sides", flush=True)
    names = [name for name in DEVICES if name in POLLING or WSACCEL.exists()]  # wsaccel: bulk and round trips
    sides = [Direct(target.port)]
    try:
        sides.append(Floor(workdir, cloud, target.port, tls))
        for name in names:
            sides.append(WebSocketSide(name, workdir, cloud, tls, plan["poll"], max(plan["ladder"]) + 20))
        figures = {side.name: {"bulk": {"up": [], "down": []}, "rtt": {size: [] for size in SIZES}} for side in sides}
        for side in sides:
            ping_pong(side.connect, 1, 1, 5)  # the first tunnel loads everything a tunnel needs
        time.sleep(SETTLE)
        for side in sides:
            figures[side.name]["idle"] = usage(side.processes())
        for run in range(plan["runs"]):
            print(f"[{label}] bulk and round trips, run {run + 1} of {plan['runs']}", flush=True)
            for side in sides:  # interleaved, so a change in the machine's load falls on every side alike
                for direction in ("up", "down"):
                    figures[side.name]["bulk"][direction].append(bulk(plan, cloud, target, side, direction))
                for size in SIZES:
                    times = sorted(ping_pong(side.connect, size, plan["rounds"], plan["rtt_limit"]))
                    figures[side.name]["rtt"][size].append({"p50": _percentile(times, 50), "p99": _percentile(times, 99),
                                                            "n": len(times)})
        # wsaccel too: with C masking each pump holds the GIL for less of each chunk, which is what
        # evens out 100 tunnels sending at once (docs/BENCHMARKS.md).
        for side in [s for s in sides if s.name in POLLING or s.name == "cra-agent + wsaccel" or isinstance(s, Floor)]:
            print(f"[{label}] {side.name}: memory with {plan['ladder']} tunnels, then all of them at once", flush=True)
            figures[side.name]["ladder"], figures[side.name]["scale"] = [], {}
            for direction in ("up", "down"):
                ladder, scale = crowd(plan, cloud, target, side, direction)
                figures[side.name]["ladder"].append(ladder)
                figures[side.name]["scale"][direction] = scale
    finally:
        for side in sides:
            side.stop()
    return figures


def meter(cloud, side):
    """What a window costs whom, in CPU seconds: the device side, the cloud, its TLS front, the bench's
    own ends, and the whole machine (the rest is other work on it)."""
    bench = psutil.Process()
    return lambda: {"device": usage(side.processes())["cpu"], "cloud": usage(cloud.program.processes())["cpu"],
                    "front": usage(cloud.front.processes())["cpu"], "bench": usage([bench])["cpu"],
                    "machine": _busy(psutil.cpu_times())}


def bulk(plan, cloud, target, side, direction):
    tunnels = open_tunnels(side.connect, b"S" if direction == "up" else b"D", 1)
    moved, seconds, before, after = stream(tunnels, target, direction, plan["warmup"], plan["window"], meter(cloud, side))
    _wait_closed(target, side)
    return {"bytes": moved[0], "seconds": seconds, **{k: after[k] - before[k] for k in before}}


def crowd(plan, cloud, target, side, direction):
    """RSS and threads with more and more open idle tunnels, then all of them moving data at once, and
    what the process keeps once they are closed again."""
    ladder = [{"tunnels": 0, **usage(side.processes())}]
    tunnels = []
    try:
        for count in plan["ladder"]:
            tunnels += open_tunnels(side.connect, b"S" if direction == "up" else b"D", count - len(tunnels))
            time.sleep(SETTLE)
            ladder.append({"tunnels": count, **usage(side.processes())})
    except BaseException:
        for tunnel in tunnels:
            tunnel.close()
        raise
    moved, seconds, before, after = stream(tunnels, target, direction, plan["warmup"], plan["scale_window"], meter(cloud, side))
    _wait_closed(target, side)
    time.sleep(SETTLE)
    ladder.append({"tunnels": "closed", **usage(side.processes())})
    return ladder, {"bytes": moved, "seconds": seconds, **{k: after[k] - before[k] for k in before}}


def setup_times(plan, workdir, cloud, target):
    """Operation created -> first byte through, for each polling device side and poll interval
    (cra-agent with `operations = polling`, so that it polls as the peers' driver does)."""
    figures = {name: {} for name in POLLING}
    rng = random.Random(7)
    for poll in plan["setup_polls"]:
        for name in POLLING:
            print(f"[setup] {name}, polling every {poll:g} s", flush=True)
            side = WebSocketSide(name, workdir, cloud, False, poll, 20, operations="polling")
            try:
                ping_pong(side.connect, 1, 1, 5)  # registered, polling, and its first tunnel done
                figures[name][poll] = setup_samples(side.connect, target, poll, plan["setup_samples"], rng)
                _wait_closed(target, side)
            finally:
                side.stop()
    return figures


def feed_figures(plan, workdir, cloud, target):
    """Notifications against polling (bench/feed.py): set-up times on the run's cloud while the idle
    agents, on a cloud of their own with a short connect hold, are counted."""
    idle_cloud, agents = feed.start_idle(plan, workdir, target.port)
    try:
        setup, logs = feed.setup_figures(plan, workdir, cloud, target, random.Random(11), _wait_closed)
        print("[feed] waiting for the idle window to end", flush=True)
        idle = feed.idle_figures(plan, agents)
    finally:
        feed.stop_idle(idle_cloud, agents)
    for transport, modes in idle.items():
        for mode, figures in modes.items():
            if "error" in figures:
                _warn(f"idle cra-agent, {mode} over {transport}: {figures['error']}")
            _check_feed(f"idle cra-agent, {mode} over {transport}", mode, figures["log"])
    for transport, modes in logs.items():
        for mode, lines in modes.items():
            _check_feed(f"set-up cra-agent, {mode} over {transport}", mode, lines)
    return {"setup": setup, "setup_logs": logs, "idle": idle, "hold": plan["idle_hold"]}


def _check_feed(who, mode, lines):
    """A warning in the report when an agent did not take its operations the way it was set to."""
    if mode == "notifications" and any("notifications unavailable" in line for line in lines):
        _warn(f"{who} fell back to polling: {next(line for line in lines if 'unavailable' in line)}")
    if mode == "notifications" and not any("real-time notifications from" in line for line in lines):
        _warn(f"{who} never said it listens to real-time notifications; its log: {lines[-3:]}")


def _warn(warning):
    print(f"WARNING {warning}", flush=True)
    WARNINGS.append(warning)


def _wait_closed(target, side):
    """Wait until the device side has closed every tunnel; one that stays open is reported with
    the process at its end, and the run goes on (the side's stop ends it)."""
    if target.wait_idle():
        return
    owners = {c.laddr.port: c.pid for c in psutil.net_connections("tcp") if c.laddr and c.pid}
    left = [f"{what} from port {peer}, {_name(owners.get(peer))}" for peer, what in list(target.live.values())]
    _warn(f"{side.name}: {len(left)} connections to the target still open a minute after their tunnels were closed: {'; '.join(left[:5])}")


def _name(pid):
    if pid is None:  # psutil.Process(None) would be the bench itself
        return "no process holds that end"
    try:
        return f"pid {pid} {' '.join(psutil.Process(pid).cmdline()[:4])}"
    except psutil.Error:
        return f"pid {pid}, gone"


def _percentile(values, pct):
    return values[min(len(values) - 1, round(pct / 100 * (len(values) - 1)))]


def _busy(times):
    return times.user + times.nice + times.system + times.irq + times.softirq + getattr(times, "steal", 0)


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    versions = {name: metadata.version(name) for name in
                ("websocket-client", "requests", "aiohttp", "c8y-device-proxy", "websocat", "psutil", "matplotlib")}
    versions["wsaccel (cra-agent + wsaccel only)"] = next((d.version for d in metadata.distributions(path=[str(WSACCEL)])), "absent")
    versions["Python"] = platform.python_version()
    versions["Python's ssl"] = ssl.OPENSSL_VERSION
    versions["stunnel"] = next(line.split()[1] for line in _output(["stunnel4", "-version"], stderr=True).splitlines()
                               if line.startswith("stunnel "))
    commit = _output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _output(["git", "-C", str(ROOT), "status", "--porcelain", "--", "cra", "cra_agent.py"])
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "kernel": platform.release(), "versions": versions, "commit": commit + (" with uncommitted changes in cra/" if dirty else ""),
            "date": time.strftime("%Y-%m-%d %H:%M %Z"), "python": sys.executable}


def _output(argv, stderr=False):
    done = subprocess.run(argv, capture_output=True, text=True)
    return (done.stderr if stderr else done.stdout).strip()


if __name__ == "__main__":
    main()
