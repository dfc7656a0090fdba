"""The inference-time scaling plot of `spct eval run --k 1,8,32`: score vs k, one line per method and headline.

Drawn with matplotlib's Agg canvas directly (`Figure` + `FigureCanvasAgg`), not through pyplot, so that making a
plot never switches the process-wide backend of a caller who has a GUI open.
"""
from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

METHOD_LABELS = {"voting": "Voting", "metarm": "MetaRM"}
_MARKERS = {"voting": "o", "metarm": "s"}


def scaling_png(runs: Sequence[Mapping], headlines: Sequence[str], *, title: str) -> bytes:
    """PNG bytes of score (%) vs k.

    runs: rows like {"method": "voting" | "metarm", "k": 8, "scores": {"RewardBench": 0.71, ...}}.
    headlines: the score keys to draw (a benchmark's headline(s)); a key no run has is left out.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ks = sorted({int(r["k"]) for r in runs})
    drawn = 0
    for method in METHOD_LABELS:
        for key in headlines:
            points = sorted((int(r["k"]), 100.0 * r["scores"][key]) for r in runs
                            if r["method"] == method and key in r["scores"])
            if not points:
                continue
            label = METHOD_LABELS[method] if len(headlines) == 1 else f"{METHOD_LABELS[method]} ({key})"
            ax.plot([k for k, _ in points], [v for _, v in points], marker=_MARKERS[method], label=label)
            drawn += 1
    # The paper's Figure 1 / 4 put k on a log2 axis: the k values are 1, 2, 4, ..., 32.
    if ks and min(ks) > 0:
        ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("k (samples per item)")
    ax.set_ylabel(headlines[0] + " (%)" if len(headlines) == 1 else "score (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
