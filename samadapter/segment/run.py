"""The nightly segmentation run: plan on the cluster, then stream inputs through the stages.

inputs (``listing``) -> anti-join with the ledger (``plan``) -> read (I/O tasks) ->
decode (half-CPU tasks) -> ``model.Segmenter`` actors (one frozen encoder + adapter each,
``ActorPoolStrategy``, GPUs per ``resources``) -> postprocess (half-CPU tasks: masks
written) -> result rows (~200 bytes an input) streamed to the driver, whose
``ledger.LedgerWriter`` writes them as ledger files by rows and by time. The driver holds
the plan's counts and at most one ledger file's rows; nothing grows with the number of
inputs. Layout of the outputs: ``layout.py``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .. import storage
from ..config import ConfigError, option
from ..constants import ATTENTION_IMPLS
from ..data.transforms import DEFAULT_MAX_PIXELS, OK, RESIZE_MODES
from .. import checkpoints
from ..ray_session import connect
from . import compaction, ledger, model, plan, resources, stages
from .lease import Lease, LeaseHeld
from .listing import INPUT_FORMATS

log = logging.getLogger(__name__)


def _opt(default, help: str, group: str, choices=None):
    """A SegmentConfig field: its flag's help, group and choices (``samadapter/config.py``)."""
    return option(default, help, group=group, choices=choices)


IO, NIGHT, MODEL = "inputs and outputs", "what a night does", "model and resources"

# A small night asks for no more model actors than give each this many batches: an actor's
# start (a node, the model's load) costs more than a few batches take.
BATCHES_PER_ACTOR = 32

# The segment job's exit statuses (jobs/segment.py --help lists them).
EXIT_STATUSES = {
    0: "the night succeeded (or had nothing new to do)",
    1: "too many of tonight's inputs failed (--max-failed-fraction), all of them failed, or none was listed",
    2: "usage: a flag, an input or a checkpoint that cannot be used (named)",
    3: "another run holds this output's lease (named: run, host, since); --wait-for-lease waits for it",
    4: "object storage stopped the night: no credentials, access denied, no such bucket, endpoint down (named)",
    5: "the model actors could not start: the same constructor error twice in a row (its last line)",
}
LEASE_STATUS, STORAGE_STATUS, MODEL_START_STATUS = 3, 4, 5


class ModelStartError(RuntimeError):
    """The model actors died while starting, twice in a row: a deterministic error."""


@dataclass
class SegmentConfig:
    """Everything the segment job does; ``jobs/segment.py``'s flags are generated from it
    (``samadapter/config.py``)."""

    output: str = option(help="output prefix (URI)", group=IO)
    checkpoint: str = option(help="adapter .safetensors, a checkpoint folder, or a training run folder (its best "
                                  "checkpoint)", group=IO)
    input: Optional[str] = _opt(None, "image prefix, .tar prefix or Parquet dataset (URI)", IO)
    input_list: Optional[str] = _opt(None, "key list instead of --input: Parquet/CSV with a uri (or key) column, "
                                           "or an S3 Inventory manifest.json", IO)
    input_root: Optional[str] = _opt(None, "outputs mirror input keys relative to this URI (default: the bucket root "
                                           "of --input, or the --input folder; an inventory's source bucket)", IO)
    sam_checkpoint: Optional[str] = _opt(None, "the official SAM weights the adapter was trained on (path or URI)", IO)
    input_format: str = _opt("auto", "what --input holds", IO, choices=INPUT_FORMATS)
    split: Optional[str] = _opt(None, "split of a Parquet dataset input (default test)", IO)
    save_probs: bool = _opt(False, "also write 8-bit probability maps under probs/", IO)
    overlays: bool = _opt(False, "also write image | overlay pictures under overlays/", IO)
    dry_run: bool = _opt(False, "plan only and print the table (listed, done, known failures, to do); builds no model", NIGHT)
    backfill: bool = _opt(False, "also redo inputs that only other (older) models segmented", NIGHT)
    retry_failed: bool = _opt(False, "retry inputs that failed permanently before (bad image files)", NIGHT)
    force: bool = _opt(False, "redo every input", NIGHT)
    lease_timeout_minutes: float = _opt(10.0, "take over an output's lease not renewed for this long (its run was "
                                              "killed)", NIGHT)
    wait_for_lease: bool = _opt(False, "wait for another run of this output to end instead of exiting 3", NIGHT)
    compact_ledger: bool = _opt(False, "only compact the ledger under --output (every fingerprint's files into a few "
                                       "large files sorted by uri) and exit; needs no input or checkpoint", NIGHT)
    compact_above_files: int = _opt(2000, "before a night, compact a fingerprint that has more ledger files than this",
                                    NIGHT)
    max_failed_fraction: float = _opt(0.01, "exit 1 above this fraction of failures among tonight's inputs", NIGHT)
    device: str = _opt("auto", "auto: GPUs wherever the cluster has or can scale up GPUs, else CPU; cpu: CPUs on purpose",
                       MODEL, choices=resources.DEVICES)
    gpus_per_actor: Optional[float] = _opt(None, "GPUs per model actor (default: 1, or 0 where no GPU can exist)", MODEL)
    min_actors: int = _opt(1, "smallest model actor pool", MODEL)
    max_actors: Optional[int] = _opt(None, "largest model actor pool (default: the GPUs the cluster can scale to)", MODEL)
    accelerator_type: Optional[str] = _opt(None, "GPU model the actors ask for (Ray's accelerator type: A10G, L4, "
                                                 "A100, ...); required where the cluster has GPU node types of "
                                                 "several kinds, so that the night lands only on its own", MODEL)
    cpus_per_actor: float = _opt(1.0, "CPUs per model actor (its torch threads)", MODEL)
    gpu_wait_minutes: float = _opt(20.0, "fail if the first GPU nodes are not up after this long", MODEL)
    batch_size: int = _opt(4, "images per model call", MODEL)
    read_batch_size: int = _opt(16, "objects per read task batch", MODEL)
    ledger_rows_per_file: int = _opt(20_000, "ledger rows per Parquet file at most", MODEL)
    ledger_flush_seconds: float = _opt(60.0, "write the ledger's waiting rows at least this often (a killed run "
                                             "redoes at most this much work)", MODEL)
    threshold: float = _opt(0.5, "probability threshold of the masks", MODEL)
    resize_mode: str = _opt("squash", "how images are fitted to the model input (as trained)", MODEL, choices=RESIZE_MODES)
    img_size: Optional[int] = _opt(None, "model input side (default: the adapter's). SAM's 1024 weights also run at 512 "
                                         "or 768 (position tables resampled; the encoder does ~1/4 of its work at 512)",
                                   MODEL)
    bf16: Optional[bool] = _opt(None, "bf16 autocast in the actors (default: on with CUDA)", MODEL)
    attention: str = _opt("auto", "encoder attention path (auto: fast for SAM's 14-token windows, original for tiny)",
                          MODEL, choices=ATTENTION_IMPLS)
    compile: bool = _opt(False, "torch.compile the model in each actor (slower start, faster steady state on GPU)", MODEL)
    max_pixels: int = _opt(DEFAULT_MAX_PIXELS, "images with more pixels are a too_many_pixels row, not decoded", MODEL)

    def __post_init__(self) -> None:
        if self.compact_above_files < 1:
            raise ConfigError("--compact-above-files must be >= 1")
        if self.compact_ledger:
            return
        if (self.input is None) == (self.input_list is None):
            raise ConfigError("give exactly one of --input (a prefix or dataset) and --input-list (a key list)")
        if self.resize_mode not in RESIZE_MODES:
            raise ConfigError(f"--resize-mode {self.resize_mode!r}: choose one of {list(RESIZE_MODES)}")
        if self.device not in resources.DEVICES:
            raise ConfigError(f"--device {self.device!r}: choose one of {list(resources.DEVICES)}")
        if self.batch_size < 1 or self.read_batch_size < 1 or self.ledger_rows_per_file < 1:
            raise ConfigError("--batch-size, read batch size and ledger rows per file must be >= 1")
        if self.ledger_flush_seconds <= 0 or self.lease_timeout_minutes <= 0:
            raise ConfigError("--ledger-flush-seconds and --lease-timeout-minutes must be > 0")
        if self.min_actors < 1 or (self.max_actors is not None and self.max_actors < self.min_actors):
            raise ConfigError("--min-actors must be >= 1 and --max-actors >= --min-actors")
        if not 0 <= self.max_failed_fraction <= 1:
            raise ConfigError("--max-failed-fraction must be in [0, 1]")
        if not 0 < self.threshold < 1:
            raise ConfigError("--threshold must be in (0, 1)")
        if self.force and self.backfill:
            raise ConfigError("--force already redoes everything: drop --backfill")


@dataclass
class SegmentSummary:
    run_id: str
    fingerprint: str
    listed: int
    todo: int
    counts: Dict[str, int] = field(default_factory=dict)  # tonight's ledger rows by status
    seconds: float = 0.0
    output: str = ""
    checkpoint: str = ""
    actors: str = ""  # how the pool was sized
    plan: Dict[str, int] = field(default_factory=dict)  # the dry run's breakdown
    first_output_s: Optional[float] = None  # when the first ledger file was written
    quarantined: List[str] = field(default_factory=list)  # unreadable ledger files moved aside tonight
    compacted: Dict[str, int] = field(default_factory=dict)  # ledger files compacted before the night, per fingerprint
    started_at: float = 0.0  # wall clock (time.time()) when planning began; ``seconds`` count from here
    planning_s: float = 0.0  # listing + anti-join with the ledger

    @property
    def processed(self) -> int:
        return sum(self.counts.values())

    @property
    def ok(self) -> int:
        return self.counts.get(OK, 0)

    @property
    def skipped(self) -> int:
        return self.counts.get(ledger.SKIPPED, 0)

    @property
    def failed(self) -> Dict[str, int]:
        return {k: v for k, v in self.counts.items() if k in ledger.FAILURES}

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    @property
    def work(self) -> int:
        """Tonight's inputs that were meant to be segmented (not skipped sidecars)."""
        return self.processed - self.skipped

    @property
    def failed_fraction(self) -> float:
        return self.failed_total / self.work if self.work else 0.0

    @property
    def images_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0



def run_segmentation(cfg: SegmentConfig, progress: bool = True) -> SegmentSummary:
    """Plan the night against the ledger and segment what is left (or only plan: ``dry_run``)."""
    import ray
    import ray.data

    # What can be checked without Ray is checked first: an answer in a second, not after Ray starts.
    if cfg.input and storage.is_local(cfg.input) and not os.path.exists(storage.local_path(cfg.input)):
        raise FileNotFoundError(f"input {cfg.input} does not exist")
    if cfg.input_list and not storage.exists(cfg.input_list):
        raise FileNotFoundError(f"--input-list {cfg.input_list} does not exist")
    adapter_uri = checkpoints.resolve_adapter(cfg.checkpoint)
    adapter_bytes = storage.read_bytes(adapter_uri)
    # Both checkpoints opened and checked here, before any Ray work: a bad file is one line
    # naming it (exit 2), not an actor that fails to start on every GPU node. A dry run
    # builds no model: it needs only the adapter (the fingerprint).
    from ..modeling.build import check_checkpoints

    from ..modeling.weights import read_safetensors_metadata

    arch = check_checkpoints(adapter_uri, None if cfg.dry_run else cfg.sam_checkpoint, cfg.img_size)
    trained_size = json.loads(read_safetensors_metadata(adapter_bytes)["config"])["img_size"]
    if arch.get("num_classes", 1) > 1 and cfg.save_probs:
        raise ConfigError(f"--save-probs writes one class's probabilities; {adapter_uri} has {arch['num_classes']} "
                          "classes (its masks/ are indexed PNGs of the classes)")
    img_size = cfg.img_size if cfg.img_size and cfg.img_size != trained_size else None  # None: as trained
    fingerprint = model.model_fingerprint(adapter_bytes, cfg.threshold, cfg.resize_mode, img_size)
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]

    connect()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    # A model actor whose constructor raises is not retried in place, and a second such
    # death in a row (no actor started in between) fails the night with that error, instead
    # of Ray Data's default of restarting it without end. A lost node is not an init death.
    ctx.actor_init_retry_on_errors = False
    ctx.max_consecutive_actor_init_deaths = 1

    # One night at a time per output (a dry run only reads, and takes no lease).
    held = None if cfg.dry_run else Lease(cfg.output, run_id, cfg.lease_timeout_minutes * 60, wait=cfg.wait_for_lease)
    with held or contextlib.nullcontext():
        return _night(cfg, adapter_uri, arch, fingerprint, run_id, held)


def compact_ledger(output: str, wait_for_lease: bool = False, lease_timeout_minutes: float = 10.0) -> Dict[str, int]:
    """``--compact-ledger``: under the output's lease, finish or remove interrupted
    compactions, then compact every fingerprint with two or more files; returns the files
    replaced per fingerprint."""
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-compact-" + uuid.uuid4().hex[:6]
    connect()
    with Lease(output, run_id, lease_timeout_minutes * 60, wait=wait_for_lease):
        compaction.recover(output)
        return dict(compaction.compact_where_needed(output, 1))


def _night(cfg: SegmentConfig, adapter_uri: str, arch: dict, fingerprint: str, run_id: str, held) -> SegmentSummary:
    t0, started_at = time.perf_counter(), time.time()
    compacted = {}
    if held is not None:  # a writer: finish what a crash interrupted, keep the ledger's files few
        compaction.recover(cfg.output)
        compacted = dict(compaction.compact_where_needed(cfg.output, cfg.compact_above_files))
    modes = plan.Modes(force=cfg.force, backfill=cfg.backfill, retry_failed=cfg.retry_failed)
    night = plan.plan_night(cfg.input, cfg.input_list, cfg.input_root, cfg.input_format, cfg.split, cfg.output,
                            fingerprint, modes, dry_run=cfg.dry_run)
    summary = SegmentSummary(run_id, fingerprint, night.listed, night.todo, output=cfg.output, checkpoint=adapter_uri,
                             started_at=started_at, planning_s=time.perf_counter() - t0,
                             quarantined=[src for src, _, _ in night.quarantined], compacted=compacted)
    log.info("planned in %.1f s: %d inputs listed, %d to do", summary.planning_s, night.listed, night.todo)
    if cfg.dry_run:
        summary.plan = plan.breakdown(night, cfg.output, fingerprint)
        summary.seconds = time.perf_counter() - t0
        return summary
    night.listed_ds = None  # the listing's blocks are no longer needed: free the object store
    if night.todo == 0:
        summary.seconds = time.perf_counter() - t0
        return summary

    actors = resources.plan_actors(resources.cluster_view(cfg.accelerator_type), arch["name"], cfg.device,
                                   cfg.gpus_per_actor, cfg.min_actors, cfg.max_actors, cfg.cpus_per_actor,
                                   cfg.accelerator_type)
    summary.actors = f"{actors.min_actors}-{actors.max_actors} actors x {actors.gpus_per_actor:g} GPU ({actors.why})"
    log.info("model actors: %s", summary.actors)
    # no more actors than the night has work for: each should get at least BATCHES_PER_ACTOR batches
    wanted = min(actors.max_actors, max(actors.min_actors, -(-night.todo // (cfg.batch_size * BATCHES_PER_ACTOR))))
    gpus = actors.gpus_per_actor > 0
    with resources.pool_requested(actors, wanted) if gpus else contextlib.nullcontext():
        if gpus:
            resources.wait_for_gpus(actors.gpus_per_actor * actors.min_actors, cfg.gpu_wait_minutes,
                                    refresh=lambda: resources.request_pool(actors, wanted),
                                    accelerator_type=actors.accelerator_type)
        _run_pipeline(cfg, night, actors, wanted, adapter_uri, arch["name"], int(arch["img_size"]), fingerprint, run_id,
                      summary, held)
    summary.seconds = time.perf_counter() - t0
    return summary


def _run_pipeline(cfg, night, actors, initial_actors, adapter_uri, arch_name, img_size, fingerprint, run_id, summary,
                  held) -> None:
    import ray.data

    # Blocks small enough to spread reads, decodes and model calls over every task and
    # actor (the plan's blocks are up to 20,000 rows), large enough not to drown the
    # executor in tiny tasks: ~8 per actor, between read_batch_size and 1,024 rows. A
    # streaming repartition: nothing is held.
    rows_per_block = min(1024, max(cfg.read_batch_size, -(-night.todo // (8 * actors.max_actors))))
    ds = night.todo_ds.repartition(target_num_rows_per_block=rows_per_block)
    ds = ds.map_batches(stages.read_stage, batch_size=cfg.read_batch_size, batch_format="numpy", num_cpus=0.25)
    ds = ds.map_batches(
        stages.decode_stage,
        fn_kwargs={"img_size": img_size, "resize_mode": cfg.resize_mode, "max_pixels": cfg.max_pixels, "keep_bytes": cfg.overlays},
        batch_size=cfg.batch_size, batch_format="numpy",
        # Half a CPU per decode task. The resource shape differs from the model actors',
        # which keeps Ray Data from fusing decode into them: decode runs in its own tasks
        # and overlaps with inference.
        num_cpus=0.5,
    )
    ds = ds.map_batches(
        model.Segmenter,
        fn_constructor_kwargs={"adapter_uri": adapter_uri, "arch": arch_name, "sam_checkpoint": cfg.sam_checkpoint, "bf16": cfg.bf16,
                               "attention": cfg.attention, "compile": cfg.compile, "device": cfg.device,
                               "img_size": img_size},
        compute=ray.data.ActorPoolStrategy(min_size=actors.min_actors, max_size=actors.max_actors, initial_size=initial_actors),
        num_gpus=actors.gpus_per_actor, num_cpus=actors.cpus_per_actor, accelerator_type=actors.accelerator_type,
        batch_size=cfg.batch_size, batch_format="numpy",
    )
    ds = ds.map_batches(
        stages.postprocess_stage,
        fn_kwargs={"output": cfg.output, "threshold": cfg.threshold, "resize_mode": cfg.resize_mode,
                   "save_probs": cfg.save_probs, "overlays": cfg.overlays, "img_size": img_size},
        batch_size=cfg.batch_size, batch_format="numpy",
        # Half a CPU, like decode: a whole-CPU task would wait behind the stream of half-CPU
        # decode tasks (never a whole CPU free) and results would pile up.
        num_cpus=0.5,
    )
    import ray.exceptions

    writer = ledger.LedgerWriter(cfg.output, fingerprint, adapter_uri, run_id, cfg.ledger_rows_per_file,
                                 cfg.ledger_flush_seconds)
    last_log = time.perf_counter()
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            writer.add(batch)
            if held is not None and held.lost:
                raise LeaseHeld(f"{held.lost}: this run stops (what it finished is in the ledger)")
            if time.perf_counter() - last_log > 30:
                counts = writer.counts
                log.info("ledger: %d of %d inputs recorded (%d ok, %d failed)", sum(counts.values()), night.todo,
                         counts.get(OK, 0), sum(v for k, v in counts.items() if k in ledger.FAILURES))
                last_log = time.perf_counter()
    except ray.exceptions.ActorDiedError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise ModelStartError(f"the model actors could not start (twice in a row): {lines[-1] if lines else exc}") from None
    finally:
        writer.close()  # also when the run fails or is stopped: what is done is recorded
        summary.counts = dict(writer.counts)
        if writer.first_file_at is not None:
            summary.first_output_s = writer.first_file_at - summary.started_at


def summary_lines(s: SegmentSummary) -> List[str]:
    """What the job prints at the end."""
    lines = [f"model fingerprint {s.fingerprint}, run {s.run_id}", f"checkpoint {s.checkpoint}"]
    if s.plan:
        width = max(len(k) for k in s.plan)
        lines += ["", "| plan | inputs |", "|---|---:|"] + [f"| {k:<{width}} | {v} |" for k, v in s.plan.items()]
        return lines
    lines += [f"inputs listed        {s.listed}", f"already done         {s.listed - s.todo}", f"to do tonight        {s.todo}",
              f"planned in           {s.planning_s:.1f} s"]
    if s.compacted:
        lines.append(f"ledger compacted     {sum(s.compacted.values())} files of {len(s.compacted)} fingerprint(s)")
    if s.quarantined:
        lines.append(f"ledger files moved to ledger/_quarantine/ (unreadable; their inputs redone): {len(s.quarantined)}")
    if s.actors:
        lines.append(f"model actors         {s.actors}")
    if s.todo:
        lines.append(f"recorded             {s.processed}   ({s.images_per_s:.1f} inputs/s over {s.seconds:.1f} s"
                     + (f"; first ledger file after {s.first_output_s:.1f} s" if s.first_output_s is not None else "") + ")")
        for status, n in sorted(s.counts.items()):
            lines.append(f"  {status:<18} {n}")
    return lines
