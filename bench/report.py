"""The run's figures as Markdown tables, PNG plots and results.json.

Only the text between the bench markers of BENCHMARKS.md is rewritten, so what people wrote
around it (profiles, conclusions) stays. Each figure is the median over the runs.
"""
import json
import math
from statistics import mean, median

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from bench import feed_report  # noqa: E402

BEGIN, END = "<!-- bench:begin (written by make bench) -->", "<!-- bench:end -->"
MB, GiB, MiB, KiB = 1e6, 2**30, 2**20, 2**10
AGENT, WSACCEL, PROXY, WEBSOCAT, FLOOR, DIRECT = (
    "cra-agent", "cra-agent + wsaccel", "DeviceProxy", "websocat", "Python TCP relay", "direct TCP")
ORDER = (AGENT, WSACCEL, PROXY, WEBSOCAT, FLOOR, DIRECT)
DIRECTIONS = {"up": "user -> device", "down": "device -> user"}
PARTS = ("device", "cloud", "front", "bench")  # who spends the CPU of a bulk window
TRANSPORTS = ("ws", "wss")


def summarize(results):
    summary = {}
    for transport in TRANSPORTS:
        summary[transport] = {}
        for name, figures in results[transport].items():
            row = {"idle_rss": figures["idle"]["rss"] / MiB, "idle_threads": figures["idle"]["threads"]}
            for direction, runs in figures["bulk"].items():
                row[direction] = median(r["bytes"] / r["seconds"] / MB for r in runs)
                for part in PARTS:
                    row[f"{direction}_{part}"] = median(r[part] / (r["bytes"] / GiB) if r["bytes"] else math.inf for r in runs)
                    row[f"{direction}_{part}_pct"] = median(100 * r[part] / r["seconds"] for r in runs)
                row[direction + "_machine"] = median(100 * r["machine"] / r["seconds"] for r in runs)
                row[direction + "_other"] = median((r["machine"] - sum(r[p] for p in PARTS)) / r["seconds"] for r in runs)
            for size, runs in figures["rtt"].items():
                row[f"p50_{size}"] = median(r["p50"] for r in runs) * 1e3
                row[f"p99_{size}"] = median(r["p99"] for r in runs) * 1e3
            if "ladder" in figures:
                # Memory from the first round, when the tunnels are the process's first hundred; the
                # second round (its ladder is in results.json) reuses what the first left behind.
                first, top = figures["ladder"][0], figures["ladder"][0][-2]
                row["ladder"] = {step["tunnels"]: step["rss"] / MiB for step in first}
                row["per_tunnel_kib"] = (top["rss"] - first[0]["rss"]) / top["tunnels"] / KiB
                row["threads_per_tunnel"] = (top["threads"] - first[0]["threads"]) / top["tunnels"]
                for direction, scale in figures["scale"].items():
                    average = sum(scale["bytes"]) / len(scale["bytes"])
                    row["scale_" + direction] = sum(scale["bytes"]) / scale["seconds"] / MB
                    row["slowest_" + direction] = min(scale["bytes"]) / average if average else 0.0
                    row["scale_n"] = len(scale["bytes"])
            summary[transport][name] = row
        direct = summary[transport][DIRECT]
        for row in summary[transport].values():
            for size in results[transport][DIRECT]["rtt"]:
                row[f"added_{size}"] = row[f"p50_{size}"] - direct[f"p50_{size}"]
    summary["setup"] = {name: {poll: {"median": median(t), "mean": mean(t), "min": min(t), "max": max(t), "beyond": mean(t) - poll / 2}
                               for poll, t in polls.items()} for name, polls in results["setup"].items()}
    return summary


def targets(summary):
    """(target, measured, met) for each target of issue 7: plain ws, except idle RSS with TLS loaded."""
    ws = summary["ws"]
    agent, proxy, websocat = ws[AGENT], ws[PROXY], ws[WEBSOCAT]
    rows = []
    for direction, words in DIRECTIONS.items():
        ratio = agent[direction] / proxy[direction]
        rows.append((f"throughput {words} >= 2x DeviceProxy", f"{agent[direction]:.0f} / {proxy[direction]:.0f} MB/s = {ratio:.2f}x", ratio >= 2))
        ratio = agent[direction] / websocat[direction]
        rows.append((f"throughput {words} >= websocat", f"{agent[direction]:.0f} / {websocat[direction]:.0f} MB/s = {ratio:.2f}x", ratio >= 1))
        ratio = agent[direction + "_device"] / proxy[direction + "_device"]
        rows.append((f"CPU per GiB {words} <= 0.5x DeviceProxy",
                     f"{agent[direction + '_device']:.2f} / {proxy[direction + '_device']:.2f} s = {ratio:.2f}x", ratio <= 0.5))
    for size in (1, 64):
        added = agent[f"added_{size}"]
        rows.append((f"added round trip, {size} B, p50 <= 0.5 ms", f"{added:.3f} ms", added <= 0.5))
    idle = summary["wss"][AGENT]["idle_rss"]
    rows.append(("idle RSS <= 32 MiB with TLS loaded (wss)", f"{idle:.1f} MiB", idle <= 32))
    for transport in TRANSPORTS:
        per_tunnel = summary[transport][AGENT]["per_tunnel_kib"]
        rows.append((f"<= 256 KiB RSS per open idle tunnel ({transport}{', CA file of the system bundle' if transport == 'wss' else ''})",
                     f"{per_tunnel:.0f} KiB", per_tunnel <= 256))
    slowest = min(agent["slowest_up"], agent["slowest_down"])
    rows.append((f"{agent['scale_n']} tunnels at once, none starved (each >= 1/4 of the mean)",
                 f"slowest {slowest:.2f} of the mean, {agent['scale_up']:.0f} / {agent['scale_down']:.0f} MB/s in all", slowest >= 0.25))
    return rows


def markdown(results, summary):
    m, plan, load = results["machine"], results["plan"], results["load"]
    present = [name for name in ORDER if name in summary["ws"]]
    crowd = [name for name in present if "ladder" in summary["ws"][name]]
    lines = [
        f"Run of {m['date']} on commit {m['commit']}{' (QUICK: not for keeping)' if results['quick'] else ''}. "
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}. "
        f"Load average {_loads(load['loadavg_before'])} before and {_loads(load['loadavg_after'])} after; "
        f"other work used {load['other_cpu'] / load['seconds']:.2f} cores on average during the "
        f"{load['seconds'] / 60:.1f} minutes of the run, so these numbers are provisional.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
        "",
        f"Command: `{results['command']}` (that is, `.venv-bench/bin/python -m bench{' --quick' if results['quick'] else ''}`). "
        f"Each figure is the median of {plan['runs']} runs, interleaved across the sides; throughput is counted where "
        f"the bytes arrive, over {plan['window']:g} s after {plan['warmup']:g} s of warm-up; round trips are "
        f"{plan['rounds']} ping-pongs (at most {plan['rtt_limit']:g} s) per run; DeviceProxy and websocat poll every "
        f"{plan['poll']:g} s, cra-agent takes its operations as by default (real-time notifications). "
        "cra-agent + wsaccel is the same agent with wsaccel importable (websocket-client then masks frames in C).",
        "",
    ]
    lines += [f"**Warning**: {w}" for w in results["warnings"]] + ([""] if results["warnings"] else [])
    lines += ["### Targets (issue 7)", "", "cra-agent without wsaccel.", "", "| target | measured | |", "|---|---|---|"]
    lines += [f"| {t} | {v} | {'met' if ok else '**missed**'} |" for t, v, ok in targets(summary)]

    lines += ["", "### Bulk throughput and CPU", "",
              "MB/s = 10^6 bytes per second, counted where the bytes arrive. CPU s/GiB: CPU seconds of the device-side "
              "process (and its children) per GiB moved. up = user -> device (the device side reads frames and writes "
              "TCP), down = device -> user (it reads TCP and masks frames). wss: the device's leg goes through stunnel; "
              "the user's leg stays ws.", "",
              "| device side | ws up MB/s | ws down MB/s | ws up CPU s/GiB | ws down CPU s/GiB | "
              "wss up MB/s | wss down MB/s | wss up CPU s/GiB | wss down CPU s/GiB |", "|---|" + "---:|" * 8]
    for name in present:
        cells = []
        for transport in TRANSPORTS:
            r = summary[transport][name]
            cells += [f"{r['up']:.0f}", f"{r['down']:.0f}", _cpu(r["up_device"], name), _cpu(r["down_device"], name)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Where the CPU of those windows went: CPU seconds per GiB moved, and in brackets the share of one "
              "core, for the device side, the relay (cra-cloud, one asyncio thread, so 100 % is its ceiling), the TLS "
              "front (stunnel) and the bench's own two ends; machine: all CPU in use (2 cores = 200 %); other: cores "
              "used by work outside the bench.", "",
              "| device side | transport | direction | device | cra-cloud | stunnel | bench | machine % | other cores |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for name in present:
        for transport in TRANSPORTS:
            r = summary[transport][name]
            for direction in DIRECTIONS:
                cells = [f"{r[f'{direction}_{p}']:.2f} ({r[f'{direction}_{p}_pct']:.0f} %)" for p in PARTS]
                lines.append(f"| {name} | {transport} | {direction} | " + " | ".join(cells) +
                             f" | {r[direction + '_machine']:.0f} | {r[direction + '_other']:.2f} |")

    lines += ["", "### Interactive round trip", "", "Milliseconds; added = p50 minus direct TCP's p50 in the same run.", "",
              "| device side | ws 1 B p50 / p99 | ws 64 B p50 / p99 | ws added 1 B / 64 B | wss 1 B p50 / p99 | wss 64 B p50 / p99 | wss added 1 B / 64 B |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name in present:
        cells = []
        for transport in TRANSPORTS:
            r = summary[transport][name]
            cells += [f"{r['p50_1']:.3f} / {r['p99_1']:.3f}", f"{r['p50_64']:.3f} / {r['p99_64']:.3f}",
                      f"{r['added_1']:.3f} / {r['added_64']:.3f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    counts = [c for c in summary["ws"][AGENT]["ladder"] if c != "closed"]
    lines += ["", "### Memory and threads", "",
              "RSS in MiB of the device-side process with its children (websocat: one process per tunnel, under the "
              "bench's poll driver; DeviceProxy runs inside it). idle: after its first tunnel has come and gone; "
              "then before, with 1, 10, 100 open idle tunnels, and once they have all moved data and closed again. "
              "Per tunnel: (RSS with the most tunnels - RSS before them) / their number. wss trusts a CA file that "
              "holds the system's bundle, as big as what a real device loads.", "",
              "| device side | transport | idle | " + " | ".join("before" if c == 0 else f"{c} open" for c in counts) +
              " | closed | per tunnel KiB | threads idle | threads per tunnel |", "|---|---|" + "---:|" * (len(counts) + 5)]
    for name in crowd:
        for transport in TRANSPORTS:
            r = summary[transport][name]
            lines.append(f"| {name} | {transport} | {r['idle_rss']:.1f} | " + " | ".join(f"{r['ladder'][c]:.1f}" for c in counts) +
                         f" | {r['ladder']['closed']:.1f} | {r['per_tunnel_kib']:.0f} | {r['idle_threads']} | {r['threads_per_tunnel']:.1f} |")

    lines += ["", f"### {summary['ws'][AGENT]['scale_n']} tunnels at once", "",
              f"All open tunnels move data for {plan['scale_window']:g} s; aggregate MB/s, and the slowest tunnel's bytes "
              "as a share of the mean (1.00 = perfectly even, 0 = starved).", "",
              "| device side | ws up MB/s (slowest) | ws down MB/s (slowest) | wss up MB/s (slowest) | wss down MB/s (slowest) |",
              "|---|---:|---:|---:|---:|"]
    for name in crowd:
        cells = [f"{summary[t][name]['scale_' + d]:.0f} ({summary[t][name]['slowest_' + d]:.2f})" for t in TRANSPORTS for d in DIRECTIONS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    polls = list(next(iter(summary["setup"].values())))
    lines += ["", "### Tunnel set-up", "",
              f"Seconds from the user's connection (the relay creates the operation) to the first byte at the target, over "
              f"ws, {plan['setup_samples']} tunnels per cell at random points of the poll cycle: median (min-max), and "
              "beyond = mean - interval/2, the side's own set-up once the poll has seen the operation (noisy where the "
              "interval is long). DeviceProxy and websocat are driven by the bench's poll loop (bench/driver.py), so "
              "theirs is the set-up of their connect, not of a poll loop of their own; cra-agent runs with "
              "`[agent] operations = polling` here, so that all three poll alike (notifications: below).", "",
              "| device side | " + " | ".join(f"poll {p:g} s | beyond" for p in polls) + " |", "|---|" + "---:|" * 2 * len(polls)]
    for name, cells in summary["setup"].items():
        lines.append(f"| {name} | " + " | ".join(f"{c['median']:.3f} ({c['min']:.3f}-{c['max']:.3f}) | {c['beyond']:.3f}"
                                                 for c in cells.values()) + " |")
    if "feed" in results:
        lines += feed_report.markdown(results["feed"], plan)
    lines += ["", "![throughput and CPU](bench/throughput.png)", "![round trips](bench/rtt.png)",
              "![memory](bench/memory.png)", "![all tunnels at once](bench/scale.png)", "![set-up](bench/setup.png)"]
    return "\n".join(lines)


def plots(results, summary, folder):
    sides = [name for name in ORDER[:-1] if name in summary["ws"]]
    fig, axes = plt.subplots(2, 2, figsize=(12, 7))
    for col, transport in enumerate(TRANSPORTS):
        for row, (suffix, unit) in enumerate((("", "MB/s"), ("_device", "device-side CPU s / GiB"))):
            ax = axes[row][col]
            for i, direction in enumerate(DIRECTIONS):
                ax.bar([x + 0.4 * i for x in range(len(sides))], [summary[transport][s][direction + suffix] for s in sides],
                       0.4, label=DIRECTIONS[direction])
            ax.set_xticks([x + 0.2 for x in range(len(sides))], sides, fontsize=8)
            ax.set_title(f"{transport}: {unit}", fontsize=10)
            ax.legend(fontsize=8)
    _save(fig, folder / "throughput.png")

    everyone = [name for name in ORDER if name in summary["ws"]]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), sharey=True)
    for ax, transport in zip(axes, TRANSPORTS):
        for i, (key, label) in enumerate((("p50_1", "1 B p50"), ("p99_1", "1 B p99"), ("p50_64", "64 B p50"), ("p99_64", "64 B p99"))):
            ax.bar([x + 0.2 * i for x in range(len(everyone))], [summary[transport][s][key] for s in everyone], 0.2, label=label)
        ax.set_xticks([x + 0.3 for x in range(len(everyone))], everyone, fontsize=7)
        ax.set_title(f"{transport}: round trip, ms", fontsize=10)
        ax.legend(fontsize=8)
    _save(fig, folder / "rtt.png")

    crowd = [name for name in sides if "ladder" in summary["ws"][name]]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), sharey=True)
    for ax, transport in zip(axes, TRANSPORTS):
        for side in crowd:
            ladder = {c: rss for c, rss in summary[transport][side]["ladder"].items() if c != "closed"}
            ax.plot(list(ladder), list(ladder.values()), marker="o", label=side)
        ax.set_yscale("log")
        ax.set_xlabel("open idle tunnels")
        ax.set_title(f"{transport}: RSS, MiB (log scale)", fontsize=10)
        ax.legend(fontsize=8)
    _save(fig, folder / "memory.png")

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), sharey=True)
    for ax, direction in zip(axes, DIRECTIONS):
        for side in crowd:
            scale = results["ws"][side]["scale"][direction]
            ax.plot(sorted(b / scale["seconds"] / MB for b in scale["bytes"]), label=side)
        ax.set_title(f"ws, all tunnels at once, {DIRECTIONS[direction]}: MB/s per tunnel, sorted", fontsize=10)
        ax.legend(fontsize=8)
    _save(fig, folder / "scale.png")

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for side, cells in summary["setup"].items():
        ax.errorbar(list(cells), [c["median"] for c in cells.values()], marker="o", capsize=3, label=side,
                    yerr=[[c["median"] - c["min"] for c in cells.values()], [c["max"] - c["median"] for c in cells.values()]])
    ax.set_xlabel("poll interval, s")
    ax.set_title("ws: set-up time, s (median, min-max)", fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, folder / "setup.png")

    if "feed" in results:
        feed_report.plot(results["feed"], feed_report.summarize(results["feed"]), plt, folder / "feed.png")


def write(results, out):
    summary = summarize(results)
    folder = out / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=1, default=str))
    plots(results, summary, folder)
    doc = out / "BENCHMARKS.md"
    text = doc.read_text() if doc.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    doc.write_text(head + BEGIN + "\n" + markdown(results, summary) + "\n" + END + rest.split(END, 1)[1])


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _cpu(value, name):
    return "-" if name == DIRECT else f"{value:.2f}"


def _loads(loads):
    return " / ".join(f"{x:.2f}" for x in loads)
