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

from samadapter.ray_session import setup_logging
from samadapter.cli import doc_parser, guarded
from samadapter.train.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SWEEP = os.path.join(ROOT, "configs", "sweeps/knowledge-tiny.yaml")
DEFAULT_RECIPE = os.path.join(ROOT, "configs", "local-tiny.yaml")


def parse_args(argv=None) -> argparse.Namespace:
    p = doc_parser("sweep.py", __doc__)
    p.add_argument("--sweep", help="a sweep YAML (default with no --grid: configs/sweeps/knowledge-tiny.yaml)")
    p.add_argument("--config", help="the base recipe (overrides the sweep file's; default configs/local-tiny.yaml)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a recipe field and its values, e.g. model.overrides.knowledge=fft,fft+edges (repeatable)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a fixed recipe override for every trial, e.g. optim.epochs=5 (repeatable)")
    p.add_argument("--dataset", help="data.dataset of every trial")
    p.add_argument("--sam-checkpoint", help="model.sam_checkpoint of every trial")
    p.add_argument("--storage", help="where the sweep's runs and results go (default: the recipe's run.storage, ./runs)")
    p.add_argument("--name", help="the sweep's name: its folder under --storage")
    p.add_argument("--search", choices=["grid", "random"], help="grid (every combination) or random (--num-samples draws)")
    p.add_argument("--num-samples", type=int, help="grid: repeats of the grid; random: number of trials")
    p.add_argument("--max-concurrent", type=int,
                   help="trials at once (default: as many as the cluster's GPUs, or half its CPUs, hold now)")
    p.add_argument("--dry-run", action="store_true", help="print the sweep and its base recipe, run nothing")
    p.add_argument("--verbose", action="store_true", help="show Ray's own INFO log lines (default: its warnings and errors)")
    return p.parse_args(argv)


def build_spec(args: argparse.Namespace):
    import yaml

    from samadapter.train.sweep import SweepSpec, parse_grid

    sets = {}
    for item in args.sets:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        sets[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    for flag, key in (("dataset", "data.dataset"), ("sam_checkpoint", "model.sam_checkpoint")):
        if getattr(args, flag):
            sets[key] = getattr(args, flag)
    changes = {"grid": parse_grid(args.grid), "search": args.search, "num_samples": args.num_samples,
               "max_concurrent": args.max_concurrent, "name": args.name, "recipe": args.config}
    sweep_file = args.sweep or (None if args.grid else DEFAULT_SWEEP)
    if sweep_file:
        spec = SweepSpec.from_file(sweep_file, **changes)
        spec.set.update(sets)
        spec.__post_init__()  # the merged sets must apply too
        return spec
    changes["recipe"] = args.config or DEFAULT_RECIPE
    return SweepSpec(set=sets, **{k: v for k, v in changes.items() if v is not None})


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

    out, status = guarded(lambda: run_sweep(spec, storage_uri=args.storage), (ConfigError,))
    if status is not None:
        return status
    print()
    print(out.pop("table"))
    for name, uri in out.items():
        print(f"{name + ':':14s}{uri}")
    return 0 if "best.yaml" in out else 1


if __name__ == "__main__":
    sys.exit(main())
