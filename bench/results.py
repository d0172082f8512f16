"""Benchmark results as JSON (`bench/results/<date>.json`) and a PNG of the main curves.

Each benchmark records its series under a section; `make bench` saves them all at the end and
draws `bench/results/<date>.png` with matplotlib (the `bench` extra): calls/s against concurrency
for each system, the latency CDF of sequential calls, and fanout time against servers.
"""

from __future__ import annotations

import datetime
import json
import pathlib
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
RESULTS: dict[str, Any] = {}


def record(section: str, key: str, value: Any) -> None:
    RESULTS.setdefault(section, {})[key] = value


def save(directory: pathlib.Path = HERE / "results", prefix: str = "") -> pathlib.Path:
    directory.mkdir(exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M")
    path = directory / f"{prefix}{stamp}.json"
    path.write_text(json.dumps(RESULTS, indent=1, default=str))
    return path


def plot(json_path: pathlib.Path) -> pathlib.Path | None:
    """Draw the PNG beside the JSON; None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    data = json.loads(json_path.read_text())
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    sweep = data.get("core", {}).get("sweep", {})
    ax = axes[0]
    for system, points in sorted(sweep.items()):
        xs = sorted(int(c) for c in points)
        ax.plot(xs, [points[str(c)]["rate"] for c in xs], marker="o", label=system)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency (threads / calls in flight)")
    ax.set_ylabel("calls/s (median)")
    ax.set_title("call throughput vs concurrency")
    ax.legend(fontsize=7)
    ax = axes[1]
    for system, lat in sorted(data.get("core", {}).get("latencies", {}).items()):
        values = sorted(lat)
        ax.plot([v * 1000 for v in values], [i / len(values) for i in range(len(values))],
                label=system)
    ax.set_xlabel("sequential call latency (ms)")
    ax.set_ylabel("fraction of calls")
    ax.set_xlim(left=0)
    ax.set_title("latency CDF, sequential calls")
    ax.legend(fontsize=7)
    ax = axes[2]
    fanout = dict(data.get("fanout", {}).get("times", {}))
    # oslo's API through each transport: from cast() until the last server consumed it.
    for system, points in data.get("oslo", {}).get("wide_fanout", {}).items():
        fanout[f"{system} (all consumed)"] = points
    for way, points in sorted(fanout.items()):
        xs = sorted(int(n) for n in points)
        ax.plot(xs, [points[str(n)] * 1000 for n in xs], marker="o", label=way)
    ax.set_xscale("log")
    ax.set_xlabel("servers")
    ax.set_ylabel("time to deliver (ms, median)")
    ax.set_title("fanout")
    ax.legend(fontsize=7)
    fig.tight_layout()
    png = json_path.with_suffix(".png")
    fig.savefig(png, dpi=110)
    return png
