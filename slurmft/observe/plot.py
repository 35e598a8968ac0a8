"""PNG plots (the ONLY matplotlib import; headless Agg backend)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from slurmft.observe.goodput import NOT_TRAINING, world_size_intervals, world_size_seconds
from slurmft.observe.report import loss_curve


def plot_recovery(records: Sequence[Mapping], path: str | os.PathLike,
                  events: Mapping[str, float] | None = None, title: str = "") -> str:
    """Loss by step (coloured by world size), loss over wall time, and the world size over wall
    time (the seconds at each size in its legend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = loss_curve(records)
    if not curve:
        raise ValueError("no step records to plot")
    t0 = curve[0][0]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4))
    for ws in sorted({c[3] for c in curve}):
        pts = [c for c in curve if c[3] == ws]
        ax1.plot([p[1] for p in pts], [p[2] for p in pts], ".", ms=3, label=f"{ws} ranks")
        ax2.plot([p[0] - t0 for p in pts], [p[2] for p in pts], ".", ms=3, label=f"{ws} ranks")
    for rec in records:
        if rec["event"] == "resume":
            ax1.axvline(int(rec["from_step"]), color="grey", ls="--", lw=1)
            ax1.annotate(f"resumed from step {rec['from_step']}", (int(rec["from_step"]), ax1.get_ylim()[1]),
                         fontsize=8, va="top")
    for key, colour in (("fault", "red"), ("detected", "orange"), ("running_again", "green")):
        if events and events.get(key) is not None:
            ax2.axvline(events[key] - t0, color=colour, ls="--", lw=1, label=key.replace("_", " "))
            ax3.axvline(events[key] - t0, color=colour, ls="--", lw=1)
    seconds = world_size_seconds(records)
    colours = {ws: f"C{i}" for i, ws in enumerate(sorted({c[3] for c in curve}))}  # as ax1/ax2
    for start, stop, ws in world_size_intervals(records):
        if ws == NOT_TRAINING:
            ax3.axvspan(start - t0, stop - t0, color="lightgrey",
                        label=f"not training: {seconds[ws]:.1f} s")
        else:
            ax3.fill_between([start - t0, stop - t0], [ws, ws], alpha=0.6,
                             color=colours.get(ws, "C9"), label=f"{ws} ranks: {seconds[ws]:.1f} s")
    handles, labels = ax3.get_legend_handles_labels()
    unique = dict(zip(labels, handles))          # one legend entry per world size
    ax3.legend(unique.values(), unique.keys(), fontsize=8)
    ax3.set(xlabel="wall time (s)", ylabel="ranks", title="world size over time",
            ylim=(0, max(seconds) + 1))
    ax1.set(xlabel="step", ylabel="loss", title="loss by step", yscale="log")
    ax2.set(xlabel="wall time (s)", ylabel="loss", title="loss over time", yscale="log")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
