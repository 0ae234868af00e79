"""Tracking without Ray (samadapter/tracking.py, train/curves.py, progress.py): a server that
does not answer, the recipe as params, the curves and the sweep chart as pictures, progress
lines. The runs logged into a real MLflow server are in test_train.py and test_sweep.py."""

from __future__ import annotations

import io
import logging

from PIL import Image

from samadapter import tracking
from samadapter.progress import line, progress
from samadapter.tasks import get_task
from samadapter.train.curves import draw_curves
from samadapter.train.sweep import bar_chart

from .rayheads import free_port


def test_a_tracking_server_that_does_not_answer_is_one_warning(caplog, monkeypatch):
    monkeypatch.setattr(tracking, "_failed", set())
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with caplog.at_level(logging.WARNING):
        assert tracking.open_run(uri, "e", "r", {"a": "1"}, {}) is None
        tracking.log_metrics(uri, "some-run", {"loss": 1.0}, 1)  # no second try, no second warning
        assert tracking.open_run(uri, "e", "r", {}, {}) is None
    assert caplog.text.count("does not answer") == 1 and "the run goes on untracked" in caplog.text


def test_params_are_the_flattened_recipe_and_the_local_default():
    assert tracking.flatten({"optim": {"lr": 1e-4}, "model": {"overrides": {"num_classes": 3}, "arch": "tiny"},
                             "task": None}) == {"optim.lr": "0.0001", "model.overrides.num_classes": "3",
                                                "model.arch": "tiny", "task": "None"}
    assert tracking.default_uri(None, "/runs", True) == "sqlite:////runs/mlflow.db"
    assert tracking.default_uri(None, "s3://b/runs", False) is None
    assert tracking.default_uri("http://mlflow:5000", "s3://b/runs", False) == "http://mlflow:5000"


def _png(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def test_curves_are_redrawn_with_each_validation_and_mark_the_best():
    task = get_task("camouflage")
    lines = [{"phase": "before training", "epoch": 0, "global_step": 0, "s_measure": 0.4, "e_measure": 0.5,
              "weighted_f": 0.2, "mae": 0.3}]
    lines += [{"phase": "step", "epoch": 1, "global_step": s, "loss": 1.0 / s} for s in (2, 4)]
    one = lines + [{"phase": "validation", "epoch": 1, "global_step": 4, "train_loss": 0.6, "s_measure": 0.6,
                    "e_measure": 0.7, "weighted_f": 0.4, "mae": 0.2}]
    two = one + [{"phase": "validation", "epoch": 2, "global_step": 8, "train_loss": 0.4, "s_measure": 0.55,
                  "e_measure": 0.7, "weighted_f": 0.4, "mae": 0.2}]
    a, b = draw_curves(one, task), draw_curves(two, task)
    assert _png(a).size == (1100, 400) and a != b
    assert _png(draw_curves([], task)).size == (1100, 400)  # nothing yet: empty axes, no error


def test_the_sweep_chart_has_a_bar_per_finished_trial():
    rows = [{"trial": "fft", "error": None, "best_ber": 3.0}, {"trial": "edges", "error": None, "best_ber": 5.0},
            {"trial": "x", "error": "boom"}]
    assert _png(bar_chart(rows, "ber")).size[0] == 800
    assert bar_chart(rows, "ber") != bar_chart(rows[:1], "ber")


def test_progress_lines_in_logs(caplog):
    assert line("prepare", 500, 2000, 10.0, "img") == "prepare: 500/2,000 (25%), 50.0 img/s, 30 s left"
    assert line("prepare", 7, None, 1.0) == "prepare: 7, 7.0 item/s"
    with caplog.at_level(logging.INFO, logger="samadapter.progress"):
        assert list(progress(range(5), 5, "work", every=2)) == [0, 1, 2, 3, 4]
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["work: 2/5 (40%)", "work: 4/5 (80%)",
                                                                      "work: 5/5 (100%)"]
