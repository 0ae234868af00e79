"""The benchmark harness runs end to end on `tiny` (its figures are not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "jobs", "benchmark.py")


def _run(tmp_path, *args, timeout=300, head="| arch |", env=None):
    out = tmp_path / "result.json"
    r = subprocess.run([sys.executable, BENCH, *args, "--json", str(out)], capture_output=True, text=True,
                       timeout=timeout, cwd=tmp_path, env=dict(os.environ, **(env or {})))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "machine: cpu " in r.stdout and f"torch {torch.__version__}" in r.stdout and head in r.stdout
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_pipeline_mode_on_tiny(ray_address, tmp_path):
    data = _run(tmp_path, "pipeline", "--arch", "tiny", "--images", "8", "--scene-size", "96",
                "--batch-size", "4", "--warmup", "0", "--repeats", "1", timeout=380,
                env={"RAY_ADDRESS": ray_address})  # the job's side joins the shared Ray
    (row,) = data["results"]
    assert row["images"] == 8 and row["ratio"] > 0 and row["bare_images_per_s"] > 0
    # the loop's own program pays imports and model load; its loop alone is faster
    assert row["bare_startup_s"] > 0 and row["warm_loop_images_per_s"] > row["bare_images_per_s"]
    assert row["ratio_vs_warm_loop"] < row["ratio"]
    # where the time goes, from the masks' file times: the first mask comes after the
    # start-up (the job's after its planning) and before the end
    assert 0 < row["bare_first_mask_s"] < row["bare_s"][0]
    assert 0 < row["pipeline_planning_s"] < row["pipeline_first_mask_s"] < row["pipeline_s"][0]
    assert row["bare_masks_per_s"] > 0 and row["pipeline_masks_per_s"] > 0
    assert row["ratio_min"] == row["ratio_max"] == row["ratio_each"][0]
    assert data["machine"]["torch"] == torch.__version__ and data["machine"]["cpu_count"] == os.cpu_count()


def test_mask_times_from_the_masks_files(tmp_path):
    from samadapter.bench.pipeline import mask_times

    # masks in bursts of three, one burst every 1.5 s, the first 2 s after the start (a
    # block through the model at once); one in a sub-folder; files that are not masks do
    # not count
    (tmp_path / "masks" / "sub").mkdir(parents=True)
    for i in range(9):
        name = ("sub/" if i == 4 else "") + f"m{i}.png"
        (tmp_path / "masks" / name).write_bytes(b"x")
        t = 1000.0 + 2.0 + 1.5 * (i // 3) + 0.01 * (i % 3)
        os.utime(tmp_path / "masks" / name, (t, t))
    (tmp_path / "masks" / "notes.txt").write_text("x")
    os.utime(tmp_path / "masks" / "notes.txt", (1100.0, 1100.0))
    got = mask_times(str(tmp_path), started_at=1000.0)
    # three masks every 1.5 s: 2 a second (not 8 masks in 3.02 s from the first to the last)
    assert got["first_mask_s"] == pytest.approx(2.0) and got["masks_per_s"] == pytest.approx(2.0, rel=0.03)
    with pytest.raises(RuntimeError, match="no masks"):
        mask_times(str(tmp_path / "nothing"), 0.0)


@pytest.mark.slow  # six child interpreters (~25 s): in the full suite, not the fast tier
@pytest.mark.timeout(300)
def test_model_and_train_step_modes_on_tiny(tmp_path):
    data = _run(tmp_path, "model", "--arch", "tiny", "--img-size", "64,128", "--warmup", "0", "--repeats", "1")
    rows = data["results"]
    assert [(r["img_size"], r["attention"]) for r in rows] == [(64, "original"), (64, "fast"), (128, "original"),
                                                              (128, "fast")]
    assert all(r["gflop_per_image"] > 0 and r["images_per_s"] > 0 and r["peak_memory_mib"] >= 0 for r in rows)
    for size in (64, 128):  # same work credited to both paths
        assert len({round(r["gflop_per_image"], 6) for r in rows if r["img_size"] == size}) == 1
    small, large = rows[0], rows[2]
    assert 3.5 < large["gflop_per_image"] / small["gflop_per_image"] < 4.5  # a quarter of the pixels
    assert small["cost_vs_largest"] == pytest.approx(small["seconds_per_image"] / large["seconds_per_image"])
    assert large["cost_vs_largest"] == 1.0
    data = _run(tmp_path, "train-step", "--arch", "tiny", "--img-size", "64", "--warmup", "0", "--repeats", "1")
    assert [r["checkpointing"] for r in data["results"]] == [False, True]


# A stand-in for the reference's image_encoder.py: its constructor, a relative import of
# `.common` (the checkout has no common.py beside it: segment_anything's serves), frozen
# weights and trainable "prompt" parameters.
FAKE_REFERENCE = """
from torch import nn
from .common import LayerNorm2d


class ImageEncoderViT(nn.Module):
    def __init__(self, img_size=1024, patch_size=16, embed_dim=768, out_chans=256, **kwargs):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, embed_dim, patch_size, patch_size)
        self.prompt_generator = nn.Linear(embed_dim, embed_dim)
        self.neck = nn.Sequential(nn.Conv2d(embed_dim, out_chans, 1), LayerNorm2d(out_chans))

    def forward(self, x):
        t = self.patch_embed(x).permute(0, 2, 3, 1)
        t = t + self.prompt_generator(t)
        return self.neck(t.permute(0, 3, 1, 2))
"""


@pytest.mark.slow  # four child processes (~15 s): in the full suite, not the fast tier
@pytest.mark.timeout(300)
def test_vs_reference_mode_times_ours_against_a_given_checkout(tmp_path):
    from samadapter.modeling.arch import arch_config
    from samadapter.bench.reference import REFERENCE_FILE

    checkout = tmp_path / "SAM-Adapter-PyTorch"
    (checkout / REFERENCE_FILE).parent.mkdir(parents=True)
    (checkout / REFERENCE_FILE).write_text(FAKE_REFERENCE)
    data = _run(tmp_path, "vs-reference", "--reference", str(checkout), "--arch", "tiny", "--img-size", "64",
                "--attention", "fast", "--rounds", "2", "--warmup", "0", "--repeats", "1")
    ref, ours = data["results"]
    assert (ref["impl"], ours["impl"]) == ("reference", "fast")
    d = arch_config("tiny").embed_dim
    assert ref["trainable_params"] == d * d + d  # only its prompt parameters train
    assert ours["trainable_params"] > 0 and ref["vs_reference"] == 1.0
    assert ours["vs_reference"] == pytest.approx(ours["median_s"] / ref["median_s"])
    assert len(ref["round_medians_s"]) == len(ours["round_medians_s"]) == 2  # the two took turns, twice


def test_vs_reference_without_a_checkout_is_one_line_and_status_2(tmp_path, capsys):
    from samadapter.jobs.benchmark import main

    assert main(["vs-reference", "--reference", str(tmp_path / "nothing"), "--arch", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no reference image encoder at") and "Traceback" not in err
    assert main(["vs-reference", "--reference", str(tmp_path), "--arch", "sam2_hiera_t"]) == 2
    assert "use vs-sam2" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(500)
def test_plan_mode_over_a_history_of_nights_before_and_after_compaction(ray_address, tmp_path):
    """The plan benchmark (one child process per plan, here joining the shared Ray): a key
    list of 2000 and a ledger of as many rows in 30 files, half of them tonight's keys;
    planned, compacted, planned again. (Its per-size mode, --keys N,M without
    --history-nights, runs the same child per size.)"""
    data = _run(tmp_path, "plan", "--keys", "2000", "--history-nights", "10", "--files-per-night", "3", timeout=480,
                head="| history_nights |", env={"RAY_ADDRESS": ray_address})
    before, after = data["results"]
    assert (before["compacted"], after["compacted"]) == (False, True)
    assert before["ledger_files"] == 30 and after["ledger_files"] == 1
    for r in (before, after):  # the same plan from fewer files: half done (another model's rows), half new
        assert r["keys"] == 2000 and r["done"] == 1000 and r["to_do"] == 1000
        assert r["driver_peak_rss_mib"] > 0 and r["seconds"] > 0


@pytest.mark.timeout(120)
def test_stages_mode_reports_each_stage_per_photo_size(tmp_path):
    data = _run(tmp_path, "stages", "--megapixels", "0.3,1.2", "--repeats", "1", head="| megapixels |")
    rows = data["results"]
    assert [round(r["megapixels"], 1) for r in rows] == [0.3, 1.2]
    for r in rows:
        stages = [k for k in r if k.startswith("cpu_ms_") and k != "cpu_ms_total"]
        assert {"cpu_ms_read", "cpu_ms_decode", "cpu_ms_model_input", "cpu_ms_postprocess", "cpu_ms_write"} <= set(stages)
        assert r["cpu_ms_total"] == pytest.approx(sum(r[k] for k in stages))
        # the decoder's 256 x 256 float16 logits at a 1024 input: 1/16 of 1024 x 1024 logits
        assert r["model_output_bytes_per_image"] == 256 * 256 * 2
        assert r["model_input_bytes_per_image"] == 1024 * 1024 * 3 and 0 < r["mask_png_bytes_per_image"] < r["encoded_bytes_per_image"]


@pytest.mark.timeout(120)
def test_stage_benchmark_leaves_the_callers_environment_alone(monkeypatch):
    from samadapter.bench.stages import SINGLE_THREADED, bench_stages

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    (row,) = bench_stages([0.1], img_size=256, repeats=1)
    assert row["model_output_bytes_per_image"] == 64 * 64 * 2
    assert "OMP_NUM_THREADS" not in os.environ and os.environ["OPENBLAS_NUM_THREADS"] == "2"
    assert set(SINGLE_THREADED.values()) == {"1"}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cold_start_mode_times_read_build_and_the_old_way(tmp_path):
    data = _run(tmp_path, "cold-start", "--arch", "tiny", "--repeats", "1", "--threads", "1")
    (row,) = data["results"]
    assert row["arch"] == "tiny" and row["checkpoint_mib"] > 0
    for kind in ("read", "build", "full_build"):
        assert row[f"{kind}_seconds"] > 0 and row[f"{kind}_peak_rss_mib"] > 0
    assert row["build_vs_read"] == pytest.approx(row["build_seconds"] / row["read_seconds"])
