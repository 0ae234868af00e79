"""The segment job's flags are generated from SegmentConfig: every field, its default, its choices."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import typing

import pytest

from samadapter import config as settings
from samadapter.constants import ATTENTION_IMPLS
from samadapter.data.transforms import RESIZE_MODES
from samadapter.segment.listing import INPUT_FORMATS
from samadapter.segment.resources import DEVICES
from samadapter.segment.run import SegmentConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _segment_job():
    from samadapter.jobs import segment

    return segment


def _jobs():
    from samadapter.jobs import evaluate, export, nightly, preflight, prepare_data, segment, sweep, train
    from samadapter.nightly import NightlyConfig
    from samadapter.train.config import TrainConfig
    from samadapter.train.sweep import SweepSpec

    return [(train, TrainConfig, ()), (sweep, TrainConfig, ()), (sweep, SweepSpec, ("recipe", "set", "grid")),
            (segment, SegmentConfig, ()), (nightly, NightlyConfig, ("entrypoint",)),
            (evaluate, evaluate.EvaluateConfig, ()), (prepare_data, prepare_data.PrepareConfig, ()),
            (preflight, preflight.PreflightConfig, ()), (export, export.ExportConfig, ())]


def _leaf_keys(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _leaf_keys(hints[f.name], prefix + f.name + ".")
        else:
            yield prefix + f.name, f


def test_every_config_field_is_a_flag_of_its_job_with_help():
    for job, cls, skip in _jobs():
        options = {o: a for a in job.build_parser()._actions for o in a.option_strings}
        keys = [(k, f) for k, f in _leaf_keys(cls) if k not in skip]
        assert keys
        for key, f in keys:
            flag = settings.flag_name(key)
            assert flag in options, f"{job.__name__}: {flag} missing"
            assert f.metadata.get("help") and options[flag].help, f"{job.__name__}: {flag} has no help"
        assert "--set" in options or job.__name__.endswith("sweep")


def test_every_benchmark_mode_takes_its_settings_as_flags():
    import argparse

    from samadapter.jobs import benchmark

    (sub,) = [a for a in benchmark.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(sub.choices) == set(benchmark.MODES)
    for mode, cls in benchmark.MODES.items():
        options = {o for a in sub.choices[mode]._actions for o in a.option_strings}
        assert {settings.flag_name(k) for k, _ in _leaf_keys(cls)} <= options, mode
    assert benchmark.parse_args(["plan", "--keys", "10,20"])[1].keys == [10, 20]
    assert benchmark.parse_args(["model", "--batch-sizes", "1", "4"])[1].batch_sizes == [1, 4]
    assert benchmark.parse_args(["stages", "--megapixels", "1.2,12"])[1].megapixels == [1.2, 12.0]


def test_flags_set_every_field_and_choices_come_from_the_constants():
    job = _segment_job()

    def cfg(*argv):
        return settings.build(SegmentConfig, job.parse_args(["--output", "o", "--checkpoint", "c", "--input", "i", *argv]))

    c = cfg("--cpus-per-actor", "2", "--read-batch-size", "8", "--max-pixels", "1000", "--no-bf16", "--compile",
            "--device", "cpu")
    assert (c.cpus_per_actor, c.read_batch_size, c.max_pixels, c.bf16, c.compile, c.device) == (2.0, 8, 1000, False, True, "cpu")
    assert cfg("--bf16").bf16 is True and cfg().bf16 is None and cfg("--compile", "false").compile is False
    assert cfg("--set", "batch_size=3", "--batch-size", "5").batch_size == 5
    parser_choices = {a.option_strings[0]: tuple(a.choices) for a in job.build_parser()._actions if a.choices}
    assert parser_choices == {"--input-format": INPUT_FORMATS, "--device": DEVICES, "--resize-mode": tuple(RESIZE_MODES),
                              "--attention": ATTENTION_IMPLS}
    with pytest.raises(SystemExit):
        job.parse_args(["--device", "tpu"])


def test_train_flags_aliases_set_and_recipe_are_one_path_in_order(tmp_path):
    from samadapter.jobs import train as job

    def build(*argv):
        return job.build_config(job.parse_args(list(argv)))

    assert build("--optim.lr", "1e-4", "--set", "optim.lr=3e-4").optim.lr == 3e-4
    assert build("--set", "optim.lr=3e-4", "--optim.lr", "1e-4").optim.lr == 1e-4
    assert build("--epochs", "3").optim.epochs == build("--optim.epochs", "3").optim.epochs == 3
    assert build("--name", "x", "--dataset", "s3://b/d").run.name == "x"
    c = build("--data.hflip", "false", "--run.bf16", "--model.overrides", "{img_size: 128}", "--task", "shadow",
              "--set", "model.overrides.knowledge=fft+edges", "--run.storage", "007")
    assert (c.data.hflip, c.run.bf16, c.model.img_size, c.task, c.run.storage) == (False, True, 128, "shadow", "007")
    assert c.model.overrides["knowledge"] == "fft+edges"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim: {epochs: 7, lr: 1e-3}\nrun: {workers: 1}\n")
    c = build("--config", str(recipe), "--run.workers", "4")
    assert (c.optim.epochs, c.optim.lr, c.run.workers, c.model.arch) == (7, 1e-3, 4, "tiny")


@pytest.mark.parametrize("argv, message", [
    (["--optim.lr", "abc"], "--optim.lr: 'abc' is not a float"),
    (["--set", "optim.lx=1"], "optim has no key 'lx'; known: batch_size"),
    (["--set", "optim.lr.x=1"], "optim.lr is a value, not a section"),
    (["--run.workers", "0"], "run.workers must be >= 1"),
    (["--data.hflip", "maybe"], "'maybe' is not true or false"),
    (["--config", "nope.yaml"], "no such file; the recipes in configs/"),
])
def test_config_errors_name_the_flag(argv, message, capsys):
    from samadapter.jobs import train as job

    assert job.main(argv) == 2
    assert message in capsys.readouterr().err


def test_yaml_values_of_the_wrong_type_and_retired_keys(tmp_path):
    from samadapter.train.config import TrainConfig

    with pytest.raises(settings.ConfigError, match="optim.epochs: 'ten' is not an int"):
        TrainConfig.from_dict({"optim": {"epochs": "ten"}})
    with pytest.raises(settings.ConfigError, match="config section 'run' must be a mapping"):
        TrainConfig.from_dict({"run": 3})
    assert TrainConfig.from_dict({"optim": {"lr": "1e-4"}, "run": {"fail_at_epoch": 2}}).optim.lr == 1e-4


def test_help_is_quick_grouped_and_imports_nothing_heavy():
    """--help builds every job's parser without torch, Ray or sklearn (each seconds to import)."""
    code = ("import sys, contextlib, io\n"
            "from samadapter.jobs import evaluate, export, nightly, preflight, prepare_data, segment, sweep, train\n"
            "for job in (evaluate, export, nightly, preflight, prepare_data, segment, sweep, train):\n"
            "    job.build_parser().format_help()\n"
            "print(sorted(m for m in ('torch', 'ray', 'sklearn', 'py_sod_metrics') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    from samadapter.jobs import train as job

    text = job.build_parser().format_help()
    assert "\nmodel:\n" in text and "\noptim:\n" in text and "--optim.epochs INT" in text
    assert "(default 10)" in text.split("--optim.epochs")[1].split("--optim")[0]  # the default recipe's value


def test_inputs_that_do_not_exist_are_usage_errors_before_ray_starts(tmp_path, capsys):
    # the fast tier refuses ray.init (conftest): these answer without Ray
    from .conftest import tiny_adapter_and_images

    job = _segment_job()
    adapter, _ = tiny_adapter_and_images(tmp_path, 1)
    assert job.main(["--input", str(tmp_path / "nope"), "--output", str(tmp_path / "out"), "--checkpoint", adapter]) == 2
    assert f"input {tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    assert job.main(["--input-list", str(tmp_path / "keys.parquet"), "--output", str(tmp_path / "out"),
                     "--checkpoint", adapter]) == 2
    assert "--input-list" in capsys.readouterr().err
