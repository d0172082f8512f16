"""The PNG beside a scale run's JSON: the cold-start curves (direct and through the proxy), the
restart storm (registrations back over time) and its rate curve with the busiest etcd member's
CPU."""

from __future__ import annotations

import itertools
import json
import pathlib
from typing import Any


def plot(json_path: pathlib.Path) -> pathlib.Path | None:
    """Draw `<json>.png`; None when matplotlib (the `bench` extra) is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    data: dict[str, Any] = json.loads(json_path.read_text()).get("scale", {})
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    ax = axes[0]
    for mode, curve in data.get("registration", {}).get("cold_start_curve", {}).items():
        pts = [(t, v) for t, v in curve if v is not None]
        ax.plot([t for t, _ in pts], [v for _, v in pts], label=mode)
    ax.set_xlabel("seconds since the hypervisors started")
    ax.set_ylabel("registrations in etcd")
    ax.set_title("cold start")
    ax.legend(fontsize=7)
    storm = data.get("faults", {}).get("cluster_restart", {})
    curve = storm.get("curve", [])
    t_start = storm.get("t_start", 0.0)
    ax = axes[1]
    ax.plot([t - t_start for t, _ in curve], [p["registered"] for _, p in curve],
            label="registries registered")
    ax.plot([t - t_start for t, p in curve if p["keys"] is not None],
            [p["keys"] for _, p in curve if p["keys"] is not None], label="keys in etcd")
    ax.axvline(0, color="grey", linestyle=":", label="etcd started again")
    ax.set_xlabel("seconds since etcd started again")
    ax.set_title(f"restart storm: cluster down {storm.get('stopped_s', '?')} s")
    ax.legend(fontsize=7)
    ax = axes[2]
    rate = [((t1 - t_start), (p1["registered"] - p0["registered"]) / max(1e-9, t1 - t0))
            for (t0, p0), (t1, p1) in itertools.pairwise(curve)]
    ax.plot([t for t, _ in rate], [max(0.0, r) for _, r in rate], label="re-registrations/s")
    ax.set_xlabel("seconds since etcd started again")
    ax.set_ylabel("registrations back per second")
    ax.set_title("restart storm: rate curve")
    cpu = storm.get("peak_cpu", [])
    if cpu:
        twin = ax.twinx()
        # PeakCpu's clock starts when etcd starts again, which is this panel's zero.
        twin.plot([t for t, _ in cpu], [v * 100 for _, v in cpu],
                  color="tab:red", alpha=0.6, label="busiest etcd member CPU %")
        twin.set_ylabel("CPU % of a core")
        twin.legend(fontsize=7, loc="upper right")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    png = json_path.with_suffix(".png")
    fig.savefig(png, dpi=110)
    return png
