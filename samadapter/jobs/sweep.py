"""Sweep recipe fields with Ray Tune: every trial a Ray Train run of the recipe.

With no arguments: the knowledge-source ablation of the paper on the embedded synthetic
scenes (configs/sweeps/knowledge-tiny.yaml: fft, embedding, fft+embedding, edges, texture and
all four, 6 epochs each, one trial at a time), then the results table.

    python jobs/sweep.py --config configs/cod10k-vit-b.yaml --dataset s3://bucket/cod10k \\
        --sam-checkpoint s3://bucket/sam_vit_b_01ec64.pth --storage s3://bucket/runs \\
        --grid model.overrides.knowledge=fft,embedding,fft+embedding,fft+edges --max-concurrent 4
    python jobs/sweep.py --sweep my-sweep.yaml --search random --num-samples 8

--grid KEY=V1,V2,... (repeatable) varies any recipe field (values parsed as YAML); a sweep
file (see samadapter/train/sweep.py) also takes distributions ({loguniform: [1e-4, 1e-3]}).
grid search runs every combination (x --num-samples); random search draws --num-samples
trials. Each trial trains <storage>/<sweep>/<trial> (rerunning the sweep resumes those
runs); the sweep writes results.md (best S-measure first), results.json, chart.png and
best.yaml (the best trial's recipe, ready for jobs/train.py --config) next to them.
"""

from __future__ import annotations

import argparse
import os
import sys

from samadapter import config as settings
from samadapter.cli import doc_parser, guarded
from samadapter.ray_session import setup_logging
from samadapter.train.config import RECIPES, ConfigError, TrainConfig
from samadapter.train.sweep import SweepSpec

DEFAULT_SWEEP = os.path.join(RECIPES, "sweeps", "knowledge-tiny.yaml")
DEFAULT_RECIPE = os.path.join(RECIPES, "local-tiny.yaml")
RECIPE_ALIASES = {"--dataset": "data.dataset", "--sam-checkpoint": "model.sam_checkpoint", "--storage": "run.storage"}


def build_parser() -> argparse.ArgumentParser:
    p = doc_parser("sweep.py", __doc__)
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a recipe field and its values, e.g. model.overrides.knowledge=fft,fft+edges (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the sweep and its base recipe, run nothing")
    p.add_argument("--verbose", action="store_true", help="show Ray's own INFO log lines (default: its warnings and errors)")
    settings.add_arguments(p, SweepSpec, target="sweep", config_flag="--sweep", set_flag=None,
                           skip=("recipe", "set", "grid"),
                           config_help="a sweep YAML (default with no --grid: configs/sweeps/knowledge-tiny.yaml)")
    settings.add_arguments(p, TrainConfig, target="recipe", aliases=RECIPE_ALIASES, default_file=DEFAULT_RECIPE,
                           config_help="the base recipe of every trial (overrides the sweep file's; default "
                                       "configs/local-tiny.yaml); the flags below set a recipe field for every trial")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def build_spec(args: argparse.Namespace) -> SweepSpec:
    """The sweep file (--sweep; the knowledge ablation when neither it nor --grid is given)
    with the command line's sweep flags, its --grid, and every trial's recipe values
    (--config, recipe flags and --set) over the file's ``recipe`` and ``set``."""
    from samadapter.train.sweep import parse_grid, read_file

    path = args.sweep_file or (None if args.grid else DEFAULT_SWEEP)
    d = read_file(path) if path else {}
    d.update(settings.assigned(SweepSpec, args, target="sweep"))
    if args.grid:
        d["grid"] = {**(d.get("grid") or {}), **parse_grid(args.grid)}
    d["recipe"] = args.recipe_file or d.get("recipe") or DEFAULT_RECIPE
    d["set"] = {**(d.get("set") or {}), **dict(settings.assigned(TrainConfig, args, target="recipe"))}
    return settings.from_dict(SweepSpec, d)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    try:
        spec = build_spec(args)
    except (ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"sweep {spec.sweep_name()}: search {spec.search}, {spec.num_samples} sample(s)")
        for key, values in spec.grid.items():
            print(f"  {key}: {values}")
        print(spec.base_config().to_yaml())
        return 0

    from samadapter.train.sweep import run_sweep

    out, status = guarded(lambda: run_sweep(spec), (ConfigError,))
    if status is not None:
        return status
    print()
    print(out.pop("table"))
    for name, uri in out.items():
        print(f"{name + ':':14s}{uri}")
    return 0 if "best.yaml" in out else 1


if __name__ == "__main__":
    sys.exit(main())
