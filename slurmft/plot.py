"""PNG plots (the ONLY matplotlib import; headless Agg backend)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from slurmft.recovery_report import loss_curve


def plot_recovery(records: Sequence[Mapping], path: str | os.PathLike,
                  events: Mapping[str, float] | None = None, title: str = "") -> str:
    """Loss by step (coloured by world size, redone steps faded) and loss over wall time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = loss_curve(records)
    if not curve:
        raise ValueError("no step records to plot")
    t0 = curve[0][0]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
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
