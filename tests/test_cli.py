"""The segment job's flags are generated from SegmentConfig: every field, its default, its choices."""

from __future__ import annotations

import dataclasses
import os

import pytest

from samadapter.constants import ATTENTION_IMPLS
from samadapter.data.transforms import RESIZE_MODES
from samadapter.segment.listing import INPUT_FORMATS
from samadapter.segment.resources import DEVICES
from samadapter.segment.run import SegmentConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _segment_job():
    from jobs import segment

    return segment


def test_every_field_is_a_flag_with_the_configs_default():
    job = _segment_job()
    args = job.parse_args([])
    for f in dataclasses.fields(SegmentConfig):
        assert hasattr(args, f.name), f"--{f.name.replace('_', '-')} missing"
        want = None if f.default is dataclasses.MISSING else f.default
        assert getattr(args, f.name) == want, f.name
        assert f.metadata.get("help"), f"{f.name} has no help text"


def test_flags_set_every_field_and_choices_come_from_the_constants():
    job = _segment_job()
    args = job.parse_args(["--output", "o", "--checkpoint", "c", "--input", "i", "--cpus-per-actor", "2",
                           "--read-batch-size", "8", "--max-pixels", "1000", "--no-bf16", "--compile", "--device", "cpu"])
    cfg = job.config_from_args(SegmentConfig, args)
    assert (cfg.cpus_per_actor, cfg.read_batch_size, cfg.max_pixels, cfg.bf16, cfg.compile, cfg.device) == (2.0, 8, 1000, False, True, "cpu")
    assert job.parse_args(["--bf16"]).bf16 is True and job.parse_args([]).bf16 is None
    parser_choices = {a.dest: tuple(a.choices) for a in job.build_parser()._actions if a.choices}
    assert parser_choices == {"input_format": INPUT_FORMATS, "device": DEVICES, "resize_mode": tuple(RESIZE_MODES),
                              "attention": ATTENTION_IMPLS}
    with pytest.raises(SystemExit):
        job.parse_args(["--device", "tpu"])



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
