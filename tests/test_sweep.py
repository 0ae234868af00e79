"""Sweeps (train/sweep.py, jobs/sweep.py): the spec, its errors, and a 2-trial grid on a local Ray."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from samadapter.tasks import get_task
from samadapter.train.config import ConfigError, TrainConfig
from samadapter.train.sweep import SweepSpec, parse_grid, results_table, trial_run_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_grid_parsing_and_validation(tmp_path):
    assert parse_grid(["model.overrides.knowledge=fft,fft+edges", "optim.lr=1e-3,3e-3"]) == {
        "model.overrides.knowledge": ["fft", "fft+edges"], "optim.lr": [1e-3, 3e-3]}  # parsed for the field's type
    with pytest.raises(ConfigError, match="expected KEY=V1,V2"):
        parse_grid(["optim.lr"])
    with pytest.raises(ConfigError, match="nothing to sweep"):
        SweepSpec()
    with pytest.raises(ConfigError, match="grid model.overrides.knowledge='nope': unknown knowledge source"):
        SweepSpec(grid={"model.overrides.knowledge": ["fft", "nope"]})
    with pytest.raises(ConfigError, match="optim has no key 'foo'"):
        SweepSpec(grid={"optim.foo": [1, 2]})
    with pytest.raises(ConfigError, match="a distribution is one of"):
        SweepSpec(grid={"optim.lr": {"normal": [0, 1]}})
    with pytest.raises(ConfigError, match="search 'bayes'"):
        SweepSpec(grid={"optim.lr": [1e-3]}, search="bayes")
    sweep = tmp_path / "s.yaml"
    sweep.write_text("recipe: r.yaml\ngrid: {optim.lr: [0.001]}\nbogus: 1\n")
    with pytest.raises(ConfigError, match="unknown keys \\['bogus'\\]"):
        SweepSpec.from_file(str(sweep))


def test_param_space_for_grid_and_random_search():
    from ray.tune.search.sample import Categorical, Float

    from samadapter.train.sweep import param_space

    grid = param_space(SweepSpec(grid={"optim.lr": [1e-3, 2e-3], "optim.weight_decay": {"loguniform": [1e-4, 1e-2]}}))
    assert grid["optim.lr"] == {"grid_search": [1e-3, 2e-3]}
    assert isinstance(grid["optim.weight_decay"], Float)
    assert (grid["optim.weight_decay"].lower, grid["optim.weight_decay"].upper) == (1e-4, 1e-2)
    random = param_space(SweepSpec(grid={"optim.lr": [1e-3, 2e-3]}, search="random", num_samples=4))
    assert isinstance(random["optim.lr"], Categorical) and random["optim.lr"].categories == [1e-3, 2e-3]


def test_the_embedded_sweep_file_and_run_names():
    spec = SweepSpec.from_file(os.path.join(ROOT, "configs", "sweeps/knowledge-tiny.yaml"))
    assert spec.sweep_name() == "knowledge-ablation-tiny"
    assert spec.base_config().optim.epochs == 6 and spec.base_config().model.arch == "tiny"
    assert "fft+embedding" in spec.grid["model.overrides.knowledge"]
    name = trial_run_name({"model.overrides.knowledge": [{"name": "edges", "weight": 0.5}], "optim.lr": 0.0003})
    assert "/" not in name and name.startswith("knowledge=") and "lr=0.0003" in name
    assert len(trial_run_name({"k": "x" * 300})) <= 90
    TrainConfig().with_overrides([f"run.name={name}"])  # a valid run name


def test_results_table_best_first_failures_last():
    rows = [
        {"trial": "a", "error": "boom", "params": {}},
        {"trial": "b", "error": None, "params": {}, "best_s_measure": 0.9, "best_e_measure": 0.8, "best_weighted_f": 0.7,
         "best_mae": 0.1, "best_epoch": 3, "before_s_measure": 0.5, "train_seconds": 10},
    ]
    table = results_table(rows, get_task("camouflage"))
    assert table.splitlines()[2].startswith("| b | 0.900 | 0.800 | 0.700 | 0.100 | 3 | 0.500 | 10 |")
    assert "| a | failed: boom |" in table


def _sweep_main():
    from samadapter.jobs import sweep

    return sweep.main


def test_sweep_cli_dry_run_and_errors(capsys):
    main = _sweep_main()
    assert main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "sweep knowledge-ablation-tiny: search grid" in out and "epochs: 6" in out
    assert main(["--grid", "model.overrides.knowledge=fft,colour", "--dry-run"]) == 2
    assert "unknown knowledge source 'colour'" in capsys.readouterr().err
    assert main(["--grid", "task=shadow,polyp", "--dry-run"]) == 2
    assert "do not sweep it" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.xdist_group("train")  # with tests/test_train.py's runs under -n 2
def test_two_trial_shadow_sweep_on_local_ray(ray_local, tmp_path, mlflow_server, capsys):
    """Two trials of the tiny shadow recipe (one epoch each): a sweep end to end, the shadow
    task trained on CPU with its BER dropping, and lower-is-better everywhere it selects."""
    from PIL import Image

    from samadapter.checkpoints import CHECKPOINT_METRICS, best_checkpoint, read_metrics_lines, run_exists
    from samadapter.train.sweep import run_sweep

    spec = SweepSpec(
        recipe=os.path.join(ROOT, "configs", "local-tiny-shadow.yaml"),
        set={"optim.epochs": 1, "optim.batch_size": 4, "run.workers": 1, "data.synthetic_train": 16, "data.synthetic_test": 8,
             "data.synthetic_size": 128, "model.overrides.img_size": 128, "data.cache_dir": str(tmp_path / "cache"),
             "run.tracking_uri": mlflow_server},
        grid={"model.overrides.knowledge": ["fft", "edges"]},
        name="ablation",
    )
    out = run_sweep(spec, storage_uri=str(tmp_path / "runs"))
    sweep = tmp_path / "runs" / "ablation"
    rows = json.loads((sweep / "results.json").read_text())
    assert [r["error"] for r in rows] == [None, None], rows
    assert {r["params"]["model.overrides.knowledge"] for r in rows} == {"fft", "edges"}
    assert rows[0]["best_ber"] <= rows[1]["best_ber"]  # lower BER first
    for r in rows:  # each trial a training run of its own under the sweep
        assert run_exists(r["run_uri"]) and r["run_uri"].startswith(str(sweep))
        trained = TrainConfig.from_yaml(os.path.join(r["run_uri"], "config.yaml"))
        assert trained.task == "shadow" and trained.loss == "balanced_bce"
        assert trained.model.overrides["knowledge"] == r["params"]["model.overrides.knowledge"]
        assert trained.run.workers == 1 and trained.optim.epochs == 1
        assert r["best_ber"] < r["before_ber"], r  # the shadow recipe learns on CPU
        # the run's best checkpoint is its lowest BER
        bers = [line["ber"] for line in read_metrics_lines(r["run_uri"]) if line.get("phase") == "validation"]
        chosen = json.loads((Path(best_checkpoint(r["run_uri"])) / CHECKPOINT_METRICS).read_text())
        assert chosen["task"] == "shadow" and chosen["ber"] == min(bers) == r["best_ber"]
    table = (sweep / "results.md").read_text()
    assert table.splitlines()[0].startswith("| trial | BER % | shadow err % |")
    assert table.splitlines()[2].startswith(f"| {rows[0]['trial']} | {rows[0]['best_ber']:.3f} |")
    assert out["table"] == table.strip()
    assert Image.open(sweep / "chart.png").size[0] > 200
    # one MLflow parent run for the sweep, each trial a run nested under it with its values as
    # params, linked from results.md
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("samadapter")
    runs = client.search_runs([experiment.experiment_id], "tags.`samadapter.sweep_uri` != ''")
    assert [r.info.run_name for r in runs] == ["ablation"] and runs[0].info.status == "FINISHED"
    trials = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{runs[0].info.run_id}'")
    assert sorted(t.data.params["model.overrides.knowledge"] for t in trials) == ["edges", "fft"]
    assert {t.info.run_id for t in trials} == {r["tracking_run_id"] for r in rows}
    for r in rows:
        assert f"({mlflow_server}/#/runs/{r['tracking_run_id']})" in table
    best = TrainConfig.from_dict(yaml.safe_load((sweep / "best.yaml").read_text()))
    assert best.task == "shadow" and best.model.overrides["knowledge"] == rows[0]["params"]["model.overrides.knowledge"]
    assert best.run.name == "ablation-best" and best.optim.epochs == 1

    # the evaluate job on the best trial (its main, in this process: jobs/evaluate.py calls
    # it): the checkpoint's task, the task's columns, its BER
    from samadapter.jobs.evaluate import main as evaluate

    capsys.readouterr()
    assert evaluate(["--dataset", best.dataset_uri(), "--split", "test", "--checkpoint", rows[0]["run_uri"],
                     "--output", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "task: shadow" in printed and "| BER % | shadow err % |" in printed
    # the same checkpoint scored by evaluation (a pixel at exactly 0.5 may flip: 0.05 points)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["ber"] == pytest.approx(rows[0]["best_ber"], abs=0.05)
