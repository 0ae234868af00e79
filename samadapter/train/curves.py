"""``curves.png`` of a training run, drawn with matplotlib (headless) from its metrics log:
the training loss per logged step and per epoch, and the task's metrics per validation with
the best epoch marked. Rank 0 redraws it after every validation."""

from __future__ import annotations

import io
from typing import List

from ..metrics import METRIC_TITLES


def draw_curves(lines: List[dict], task) -> bytes:
    """PNG bytes of the curves of ``lines`` (``checkpoints.read_metrics_lines``: phases
    ``step``, ``before training``, ``validation``) in ``task``'s metrics."""
    import logging

    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # (its font cache's INFO lines in the job log)
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    steps = [r for r in lines if r.get("phase") == "step"]
    vals = [r for r in lines if r.get("phase") == "validation"]
    before = [r for r in lines if r.get("phase") == "before training"]
    fig = Figure(figsize=(11, 4), dpi=100)
    loss_ax, metric_ax = fig.subplots(1, 2)
    if steps:
        loss_ax.plot([r["global_step"] for r in steps], [r["loss"] for r in steps], lw=1, alpha=0.6, label="step")
    if vals:
        loss_ax.plot([r["global_step"] for r in vals], [r["train_loss"] for r in vals], "o-", label="epoch mean")
    loss_ax.set(xlabel="step", ylabel="training loss", title="loss")
    loss_ax.grid(alpha=0.3)
    if steps or vals:
        loss_ax.legend()
    points = [{**before[-1], "epoch": 0}] if before else []
    points += vals
    best = task.best_of(vals) if vals else None
    for name in task.names:
        xs = [r["epoch"] for r in points if name in r]
        metric_ax.plot(xs, [r[name] for r in points if name in r], "o-", label=METRIC_TITLES.get(name, name))
    if best is not None:
        metric_ax.axvline(best["epoch"], color="grey", ls="--", lw=1)
        metric_ax.annotate(f"best: epoch {best['epoch']}\n{METRIC_TITLES.get(task.select_by, task.select_by)} "
                           f"{best[task.select_by]:.3f}", (best["epoch"], best[task.select_by]),
                           textcoords="offset points", xytext=(6, -28), fontsize=8)
    metric_ax.set(xlabel="epoch (0: before training)", title=f"validation ({task.name})")
    metric_ax.grid(alpha=0.3)
    if points:
        metric_ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
