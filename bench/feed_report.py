"""The notifications-against-polling figures (bench/feed.py) as a section of BENCHMARKS.md and a plot.

Idle traffic is reported per hour at the platform's defaults. Polling's window is scaled to an
hour as it is. A notifications window holds whole connect cycles of the short hold the idle cloud
was started with; a cycle is the same request and answer whatever the hold, so the figure is a
cycle's bytes times the cycles in an hour at the default hold of 5400 s, plus the TCP keepalive
probes that an idle held connect draws (the short hold has none: it never idles 30 s).
"""
from statistics import median

from bench.feed import KEEPALIVE_IDLE, MODES, POLL_INTERVAL, TRANSPORTS

DEFAULT_HOLD = 5400.0  # s: the platform's advised /meta/connect timeout, 5 400 000 ms
PACKET_HEADERS = 66  # bytes a TCP segment adds on Ethernet: 14 Ethernet + 20 IPv4 + 20 TCP + 12 timestamp option
PROBE_PACKETS = 2  # a keepalive probe and the peer's ACK
HOUR, DAY, MONTH = 3600, 24 * 3600, 30 * 24 * 3600
SETUP_TARGETS = (50, 0.3), (95, 1.0)  # (percentile, at most seconds) with notifications
IDLE_TARGET = 20  # notifications' idle bytes at most 1/IDLE_TARGET of polling's


def summarize(feed):
    """{transport: {mode: row}}, each row the set-up percentiles and the idle traffic per hour."""
    summary = {}
    for transport in TRANSPORTS:
        summary[transport] = {}
        for mode in MODES:
            samples = sorted(feed["setup"][transport][mode])
            row = {"n": len(samples), "p50": percentile(samples, 50), "p95": percentile(samples, 95),
                   "max": samples[-1], "median": median(samples)}
            idle = feed["idle"][transport][mode]
            if "error" not in idle:
                row.update(per_hour(idle, mode))
            summary[transport][mode] = row
    return summary


def per_hour(idle, mode):
    """The idle window's figures as an hour at the defaults (see the module's docstring). Connections
    that moved no byte in the window (with notifications, the REST connection idle beside the held
    connect) count by time whatever the mode: only keepalive probes cross them."""
    http, tls, wire = idle["http"], idle["tls"], idle["wire"]
    by_time = HOUR / idle["seconds"]
    silent = wire["silent"]["segments_in"] + wire["silent"]["segments_out"]
    if mode == "notifications":
        scale = HOUR / DEFAULT_HOLD / idle["periods"]  # window -> one cycle -> the cycles of an hour
        probes = HOUR / KEEPALIVE_IDLE  # the held connect is silent all hour (estimated: not so at the short hold)
    else:
        scale = by_time
        probes = 0  # a poll every 5 s: its connection is never silent for KEEPALIVE_IDLE
    http_bytes = (http["up"] + http["down"]) * scale
    tls_bytes = (tls["up"] + tls["down"]) * scale if tls else None
    active = wire["segments_in"] + wire["segments_out"] - silent
    packets = active * scale + silent * by_time + PROBE_PACKETS * probes
    return {"requests": sum(http["requests"].values()) * scale, "http": http_bytes, "tls": tls_bytes,
            "segments": active * scale, "silent_packets": silent * by_time, "silent_connections": wire["silent"]["connections"],
            "probe_packets": PROBE_PACKETS * probes, "packets": packets,
            "wire": (tls_bytes if tls else http_bytes) + PACKET_HEADERS * packets,
            "cycle": {"up": http["up"] / idle["periods"], "down": http["down"] / idle["periods"],
                      "tls": (tls["up"] + tls["down"]) / idle["periods"] if tls else None,
                      "segments": active / idle["periods"], "requests": dict(http["requests"])}}


def percentile(values, pct):
    """Nearest rank on sorted values, as the bench's other percentiles."""
    return values[min(len(values) - 1, round(pct / 100 * (len(values) - 1)))]


def targets(summary):
    rows = []
    for transport in TRANSPORTS:
        row = summary[transport]["notifications"]
        for pct, limit in SETUP_TARGETS:
            value = row[f"p{pct}"]
            rows.append((f"set-up with notifications, p{pct} <= {limit:g} s ({transport})",
                         f"{value:.3f} s ({row['n']} sessions; polling: {summary[transport]['polling'][f'p{pct}']:.3f} s)", value <= limit))
    for transport in TRANSPORTS:
        notifications, polling = summary[transport]["notifications"], summary[transport]["polling"]
        if "wire" not in notifications or "wire" not in polling:
            rows.append((f"idle traffic with notifications <= 1/{IDLE_TARGET} of polling at 5 s ({transport})",
                         "not measured (see the warnings)", False))
            continue
        ratio = notifications["wire"] / polling["wire"]
        rows.append((f"idle traffic with notifications <= 1/{IDLE_TARGET} of polling at 5 s ({transport}, bytes with TCP/IP)",
                     f"{_bytes(notifications['wire'])} / {_bytes(polling['wire'])} per hour = 1/{1 / ratio:.0f}", ratio <= 1 / IDLE_TARGET))
    return rows


def markdown(feed, plan):
    summary = summarize(feed)
    lines = ["", "### Operations: notifications against polling (issue 11)", "",
             "cra-agent as configured by default (`[agent] operations = notifications`: a Bayeux long poll that "
             "cra-cloud holds until an operation comes) against `operations = polling` at the default "
             f"`poll_interval` of {POLL_INTERVAL:g} s, in the same run.", "",
             "| target | measured | |", "|---|---|---|"]
    lines += [f"| {t} | {v} | {'met' if ok else '**missed**'} |" for t, v, ok in targets(summary)]
    lines += ["", "Idle traffic per hour at the platform's defaults (connect hold 5400 s, keepalive 30 s), and "
              "the set-up time from the user's connection to the first byte at the target. HTTP: the bytes of "
              "the requests and answers; with TLS: the bytes of the TLS records that carry them (wss); with "
              f"TCP/IP: that plus {PACKET_HEADERS} bytes per packet (Ethernet, IPv4, TCP with timestamps), the "
              "packets counted as TCP segments both ways plus, with notifications, the keepalive probes of the "
              "held connect (estimated, below). Per day and per month: the TCP/IP figure.", "",
              "| mode | transport | set-up p50 / p95 s | requests/h | bytes/h HTTP | bytes/h with TLS | packets/h | "
              "bytes/h with TCP/IP | per day | per 30-day month |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for transport in TRANSPORTS:
        for mode in MODES:
            r = summary[transport][mode]
            cells = [f"{r['p50']:.3f} / {r['p95']:.3f}"]
            if "wire" in r:
                cells += [f"{r['requests']:.2f}" if r["requests"] < 10 else f"{r['requests']:.0f}", _bytes(r["http"]),
                          _bytes(r["tls"]) if r["tls"] is not None else "-", f"{r['packets']:.0f}", _bytes(r["wire"]),
                          _bytes(r["wire"] * DAY / HOUR), _bytes(r["wire"] * MONTH / HOUR)]
            else:
                cells += ["not measured"] * 7
            lines.append(f"| {mode} | {transport} | " + " | ".join(cells) + " |")
    lines += ["", *cycle_lines(feed, summary), "", *method_lines(feed, plan, summary), "", "![notifications against polling](bench/feed.png)"]
    return lines


def cycle_lines(feed, summary):
    """What one repeated exchange costs (a held connect cycle, a poll), where the packets of an hour
    come from, and the keepalive probes as measured on silent connections."""
    lines = ["What one idle exchange costs, as measured (per cycle of the window: HTTP bytes up / down, TLS "
             "bytes both ways, TCP segments both ways), and where an hour's packets come from:", ""]
    for transport in TRANSPORTS:
        for mode in MODES:
            r = summary[transport][mode]
            if "cycle" not in r:
                continue
            c, periods = r["cycle"], feed["idle"][transport][mode]["periods"]
            what = "one held /meta/connect and its answer" if mode == "notifications" else f"one poll (every {POLL_INTERVAL:g} s)"
            tls = f", {c['tls']:.0f} B in TLS" if c["tls"] is not None else ""
            requests = ", ".join(f"{n / periods:g} x {name}" for name, n in c["requests"].items())
            lines.append(f"- {mode} over {transport}: {what}: {c['up']:.0f} / {c['down']:.0f} B HTTP{tls}, "
                         f"{c['segments']:.1f} segments ({requests or 'no requests'}); packets an hour: "
                         f"{r['segments']:.0f} of these exchanges, {r['silent_packets']:.0f} measured on "
                         f"{r['silent_connections']} connection(s) silent in the window, {r['probe_packets']:.0f} "
                         "estimated for the held connect's keepalive")
    stretches = [s for t in TRANSPORTS for m in MODES for s in feed["idle"][t][m].get("quiet", {}).get("stretches", [])]
    if stretches:
        seconds, segments = sum(s for s, _ in stretches), sum(n for _, n in stretches)
        expected = sum(PROBE_PACKETS * int(s // KEEPALIVE_IDLE) for s, _ in stretches)
        lines += ["", f"Keepalive, measured wherever an agent's connection was silent for more than {KEEPALIVE_IDLE:g} s "
                  f"during the run (with notifications, the REST connection after the first listing): {segments} segments "
                  f"in {len(stretches)} stretches of {seconds:.0f} s of silence in all; a probe and its answer after each "
                  f"{KEEPALIVE_IDLE:g} s of silence would make {expected}."]
    return lines


def method_lines(feed, plan, summary):
    hold = feed["hold"]
    notifications = [feed["idle"][t]["notifications"] for t in TRANSPORTS if "periods" in feed["idle"][t]["notifications"]]
    cycles = notifications[0]["periods"] if notifications else 0
    return [
        f"How: **set-up**: {plan['feed_samples']} sessions per mode and transport, each after a random wait of "
        f"0-{POLL_INTERVAL:g} s (a click at a random point of the poll cycle), on the run's cra-cloud (hold 5400 s); "
        "p50 and p95 by nearest rank. **Idle traffic**: four more agents (each mode, over ws and wss) left alone on "
        f"a cra-cloud of their own started with `--notification-hold {hold:g}`, each behind a TCP relay of the bench "
        "(bench/wire.py) that counts the bytes each way, the HTTP requests, and the TCP segments on the agent's "
        "side (the kernel's tcpi_segs_in/out of the relay's socket: pure ACKs and keepalive probes included); over "
        "wss that relay sits between the agent and a stunnel of its own, and a second one between stunnel and "
        "cra-cloud reads the HTTP inside. They run while the set-up figures are taken. Each window starts half a "
        f"period after a repeated request, at least {plan['idle_settle']:g} s after the agent started, and spans whole "
        f"periods ({plan['idle_window']:g} s: {cycles} connect cycles of {hold:g} s, or polls every {POLL_INTERVAL:g} s). "
        f"Scaling to an hour at the defaults: polling, by time; notifications, the held connect's bytes and segments "
        f"/ {cycles} cycles x {HOUR / DEFAULT_HOLD:.3f} cycles an hour (the answer's advice then names a longer "
        "timeout, 2 more digits, left out), and the segments of connections that moved no byte in the window by "
        "time: with notifications the agent keeps its REST connection beside the held connect, and cra-cloud "
        "(aiohttp) closes an idle one only after 3630 s, so its keepalive probes count, measured. **Keepalive of "
        f"the held connect** (estimated: at a {hold:g} s hold it is never silent for {KEEPALIVE_IDLE:g} s): silent all "
        f"hour at the default hold, it draws a probe and its answer every {KEEPALIVE_IDLE:g} s, {PROBE_PACKETS} x "
        f"{HOUR / KEEPALIVE_IDLE:.0f} packets of about {PACKET_HEADERS} bytes, "
        f"{_bytes(PROBE_PACKETS * HOUR / KEEPALIVE_IDLE * PACKET_HEADERS)} an hour; polling's one connection is never "
        "silent that long. **TCP/IP**: segments were counted on loopback, whose MTU is 64 KiB; every idle message "
        "here is below an Ethernet segment's 1448 bytes of payload, so the count is what a real link carries, "
        "retransmissions aside. tshark was not used."]


def plot(feed, summary, plt, path):
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    ax = axes[0]
    for transport in TRANSPORTS:
        for mode in MODES:
            samples = sorted(feed["setup"][transport][mode])
            ax.plot(samples, [(i + 1) / len(samples) for i in range(len(samples))], marker=".", label=f"{mode}, {transport}")
    ax.set_xscale("log")
    ax.set_xlabel("set-up time, s (log scale)")
    ax.set_title("set-up: share of sessions up within a time", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[1]
    for i, mode in enumerate(MODES):
        values = [summary[t][mode].get("wire", 0) for t in TRANSPORTS]
        ax.bar([x + 0.4 * i for x in range(len(TRANSPORTS))], values, 0.4, label=mode)
    ax.set_xticks([x + 0.2 for x in range(len(TRANSPORTS))], TRANSPORTS)
    for i, mode in enumerate(MODES):
        for x, transport in enumerate(TRANSPORTS):
            value = summary[transport][mode].get("wire", 0)
            ax.annotate(_bytes(value), (x + 0.4 * i, value), ha="center", va="bottom", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylim(bottom=1e3, top=1e7)
    ax.set_title("idle: bytes per hour with TCP/IP (log scale)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _bytes(value):
    for unit, size in (("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"
