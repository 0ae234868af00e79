"""Batch segmentation with Ray Data.

Stages (streaming): list keys on the driver (one listing) -> read bytes (I/O tasks) ->
decode + resize on CPU (its own ``map_batches``) -> :class:`Segmenter` actors, each
holding one frozen encoder + adapter (``ActorPoolStrategy(min_size, max_size)``, GPUs per
actor) -> CPU postprocess: logits resized to the original size, thresholded, PNG-encoded
and written -> manifest rows, streamed back to the driver and written as Parquet parts.
Decode and postprocess are half-CPU tasks that never import torch.

Output layout under ``--output``::

    masks/<key without extension>.png       0/255 mask at the original resolution
    probs/<key without extension>.png       8-bit probability map (--save-probs)
    overlays/<key without extension>.png    image | overlay, side by side (--overlays)
    manifest/run-<id>/part-NNNNN.parquet    one row per input

(``c.jpg`` and ``c.png`` side by side keep their extension: ``masks/c.jpg.png``.)

A rerun with the same model fingerprint skips inputs that already have an ``ok`` row in
any manifest; ``force`` reprocesses everything.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Set

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..data import storage
from ..data.transforms import DEFAULT_MAX_PIXELS, RESIZE_MODES, decode_image, resize_image, resize_logits_numpy, resized_size
from .inputs import InputListing, is_image_key, list_input, read_objects, tar_members, unsafe_key_reason

log = logging.getLogger(__name__)

MANIFEST_SCHEMA = pa.schema(
    [
        ("input_key", pa.string()),
        ("output_key", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("fingerprint", pa.string()),
        ("seconds", pa.float64()),
        ("actor", pa.string()),
    ]
)
UNSAFE_KEY = "unsafe_key"
READ_ERROR = "read_error"


@dataclass
class SegmentConfig:
    input: str
    output: str
    checkpoint: str
    sam_checkpoint: Optional[str] = None
    input_format: str = "auto"
    split: Optional[str] = None
    batch_size: int = 4
    gpus_per_actor: Optional[float] = None  # None: 1 when the cluster has GPUs, else 0
    min_actors: int = 1
    max_actors: Optional[int] = None  # None: the cluster's GPU count (>= 1), 1 on CPU
    cpus_per_actor: float = 1.0
    save_probs: bool = False
    overlays: bool = False
    force: bool = False
    max_failed_fraction: float = 0.01
    threshold: float = 0.5
    resize_mode: str = "squash"
    bf16: Optional[bool] = None  # None: on with CUDA
    attention: str = "auto"
    compile: bool = False  # torch.compile the model in each actor
    max_pixels: int = DEFAULT_MAX_PIXELS
    read_batch_size: int = 16
    manifest_flush_rows: int = 5000

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"--resize-mode {self.resize_mode!r}: choose one of {list(RESIZE_MODES)}")
        if self.batch_size < 1:
            raise ValueError("--batch-size must be >= 1")
        if self.min_actors < 1 or (self.max_actors is not None and self.max_actors < self.min_actors):
            raise ValueError("--min-actors must be >= 1 and --max-actors >= --min-actors")
        if not 0 <= self.max_failed_fraction <= 1:
            raise ValueError("--max-failed-fraction must be in [0, 1]")
        if not 0 < self.threshold < 1:
            raise ValueError("--threshold must be in (0, 1)")


# ------------------------------------------------------------------ checkpoints
def resolve_checkpoint(uri: str) -> str:
    """An adapter file from an adapter path, a checkpoint folder or a training run folder.

    For a run folder the checkpoint with the best ``s_measure`` (its ``metrics.json``) is taken.
    """
    uri = str(uri).rstrip("/")
    if uri.endswith(".safetensors"):
        if not storage.exists(uri):
            raise FileNotFoundError(f"checkpoint {uri} does not exist")
        return uri
    adapter = storage.join(uri, "adapter.safetensors")
    if storage.exists(adapter):
        return adapter
    fs, path = storage.fsspec_filesystem(uri)
    if not fs.exists(path):
        raise FileNotFoundError(f"checkpoint {uri} does not exist")
    best, best_score = None, -1.0
    for entry in fs.ls(path, detail=True):
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if entry["type"] != "directory" or not name.startswith("checkpoint_"):
            continue
        ckpt = storage.join(uri, name)
        try:
            metrics = json.loads(storage.read_bytes(storage.join(ckpt, "metrics.json")))
        except FileNotFoundError:
            continue
        score = float(metrics.get("s_measure", -1.0))
        if score > best_score and storage.exists(storage.join(ckpt, "adapter.safetensors")):
            best, best_score = ckpt, score
    if best is None:
        raise FileNotFoundError(
            f"{uri}: no adapter checkpoint found (expected an adapter .safetensors file, a checkpoint "
            "folder with adapter.safetensors, or a training run folder with checkpoint_* folders)"
        )
    log.info("using the best checkpoint of the run (S-measure %.3f): %s", best_score, best)
    return storage.join(best, "adapter.safetensors")


def model_fingerprint(adapter_bytes: bytes, cfg: SegmentConfig) -> str:
    """Identifies the outputs: adapter (which names its base weights) + output settings."""
    h = hashlib.sha256(adapter_bytes)
    h.update(json.dumps({"threshold": cfg.threshold, "resize_mode": cfg.resize_mode}, sort_keys=True).encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- output keys
def output_stems(keys: Iterable[str]) -> Dict[str, str]:
    """Input key -> output stem: ``a/b/c.jpg`` -> ``a/b/c``.

    Keys that would share a stem (``c.jpg`` and ``c.png`` side by side) keep their full
    name instead (``c.jpg``, ``c.png``), so that no output overwrites another. Keys
    without an image extension (a dataset's ``image_id``) are used as they are.
    """
    keys = list(keys)
    stripped = {k: (posixpath.splitext(k)[0] if is_image_key(k) else k) for k in keys}
    counts = Counter(stripped.values())
    return {k: (stem if counts[stem] == 1 else k) for k, stem in stripped.items()}


def output_key(kind: str, stem: str) -> str:
    """``masks/<stem>.png`` (``kind``: masks, probs or overlays)."""
    return f"{kind}/{stem}.png"


def load_adapter_model(adapter_uri: str, sam_checkpoint: Optional[str], attention: str = "auto"):
    """The model an adapter checkpoint describes (arch from its metadata), in eval mode.

    Official SAM weights are fetched once per machine (``storage.local_copy``).
    """
    from ..modeling import build_model
    from ..modeling.weights import read_adapter

    _, meta = read_adapter(adapter_uri)
    config = json.loads(meta["config"])
    arch = config.pop("name")
    sam_path = storage.local_copy(sam_checkpoint) if sam_checkpoint else None
    return build_model(arch, sam_checkpoint=sam_path, adapter_checkpoint=adapter_uri, attention=attention, **config).eval()


# ---------------------------------------------------------------------- stages
def read_stage(batch: Dict[str, np.ndarray], root: str) -> Dict[str, np.ndarray]:
    """I/O: keys -> bytes (empty bytes plus an error for objects that cannot be read)."""
    keys = [str(k) for k in batch["key"]]
    got = read_objects(root, keys)
    return {
        "key": np.asarray(keys, dtype=object),
        "out": batch["out"],
        "data": np.asarray([g[0] if g[0] is not None else b"" for g in got], dtype=object),
        "read_error": np.asarray([g[1] for g in got], dtype=object),
    }


def tar_stage(row: Dict[str, object], root: str, done: Set[str]) -> List[Dict[str, object]]:
    """I/O: one archive -> one row per image member not finished yet.

    Members whose key would escape the output prefix get an ``unsafe_key`` error.
    """
    members = [m for m in tar_members(root, str(row["key"])) if m[0] not in done]
    stems = output_stems(m[0] for m in members)
    rows = []
    for key, data, err in members:
        why = unsafe_key_reason(key)
        if why and not err:
            err = f"{UNSAFE_KEY}: {why}"
        rows.append({"key": key, "out": stems[key], "data": data if data is not None else b"", "read_error": err})
    return rows


def decode_stage(batch: Dict[str, np.ndarray], img_size: int, resize_mode: str, max_pixels: int, keep_bytes: bool) -> Dict[str, np.ndarray]:
    """CPU: bytes -> size x size x 3 uint8 model inputs plus the original size and status."""
    n = len(batch["key"])
    images = np.zeros((n, img_size, img_size, 3), dtype=np.uint8)
    heights = np.zeros(n, np.int32)
    widths = np.zeros(n, np.int32)
    status, reason, seconds = [], [], []
    for i in range(n):
        t0 = time.perf_counter()
        err = batch["read_error"][i] if "read_error" in batch else ""
        if err:
            err = str(err)
            unsafe = err.startswith(UNSAFE_KEY + ": ")
            status.append(UNSAFE_KEY if unsafe else READ_ERROR)
            reason.append(err[len(UNSAFE_KEY) + 2 :] if unsafe else err)
        else:
            d = decode_image(batch["data"][i], max_pixels=max_pixels)
            status.append(d.status)
            reason.append(d.reason)
            if d.ok:
                heights[i], widths[i] = d.image.shape[:2]
                images[i] = resize_image(d.image, img_size, resize_mode)
        seconds.append(time.perf_counter() - t0)
    out = {
        "key": batch["key"],
        "out": batch["out"],
        "image": images,
        "height": heights,
        "width": widths,
        "status": np.asarray(status, dtype=object),
        "reason": np.asarray(reason, dtype=object),
        "seconds": np.asarray(seconds, dtype=np.float64),
    }
    if keep_bytes:
        out["data"] = batch["data"]
    return out


def infer_logits(model, forward, images: np.ndarray, device, bf16: bool) -> np.ndarray:
    """B x S x S x 3 uint8 model inputs -> B x S x S float16 logits (clamped to float16's
    range): pinned host memory and a non-blocking copy on GPU, ``inference_mode``, bf16
    autocast when asked. ``forward`` is ``model`` or its ``torch.compile`` wrapper."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images))
    if device.type == "cuda":
        x = x.pin_memory()
    x = x.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        out = forward(model.normalize(x))
    return out[:, 0].float().clamp(-60000, 60000).cpu().numpy().astype(np.float16)


class Segmenter:
    """Ray Data callable class: one frozen encoder + adapter per actor, built in ``__init__``."""

    def __init__(
        self, adapter_uri: str, sam_checkpoint: Optional[str], bf16: Optional[bool], attention: str = "auto", compile: bool = False
    ):
        import torch

        # Logical GPUs without CUDA (a CPU machine, a simulated cluster): run on the CPU.
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_adapter_model(adapter_uri, sam_checkpoint, attention).to(self.device)
        self.forward = torch.compile(self.model) if compile else self.model
        self.bf16 = (self.device.type == "cuda") if bf16 is None else bool(bf16)
        import ray

        ctx = ray.get_runtime_context()
        self.actor = f"{ctx.get_node_id()[:8]}:{os.getpid()}"
        log.info("segmenter %s ready on %s (bf16=%s)", self.actor, self.device, self.bf16)

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        t0 = time.perf_counter()
        ok = np.asarray([s == "ok" for s in batch["status"]])
        size = self.model.img_size
        logits = np.zeros((len(ok), size, size), dtype=np.float16)
        if ok.any():
            logits[ok] = infer_logits(self.model, self.forward, batch["image"][ok], self.device, self.bf16)
        share = (time.perf_counter() - t0) / max(1, len(ok))
        result = {k: v for k, v in batch.items() if k != "image"}
        result["logits"] = logits
        result["seconds"] = batch["seconds"] + share
        result["actor"] = np.asarray([self.actor] * len(ok), dtype=object)
        return result


def _png(array: np.ndarray, mode: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _overlay(data: bytes, mask: np.ndarray) -> np.ndarray:
    """image | image with the mask tinted, side by side (H x 2W x 3)."""
    d = decode_image(data)
    image = d.image
    tinted = image.astype(np.float32)
    tinted[mask] = 0.45 * tinted[mask] + 0.55 * np.array([255, 40, 40], np.float32)
    return np.concatenate([image, tinted.astype(np.uint8)], axis=1)


def postprocess_stage(
    batch: Dict[str, np.ndarray],
    output: str,
    fingerprint: str,
    threshold: float,
    resize_mode: str,
    save_probs: bool,
    overlays: bool,
) -> Dict[str, np.ndarray]:
    """CPU: logits -> mask at the original size -> PNG objects; returns manifest rows.

    Torch-free (numpy and PIL), like decode: these tasks' worker processes come and go,
    and each would otherwise pay torch's import (about 2 s of CPU) when it starts.
    """
    rows = {name: [] for name in MANIFEST_SCHEMA.names}
    logit_threshold = float(np.log(threshold / (1 - threshold)))
    for i, key in enumerate(batch["key"]):
        t0 = time.perf_counter()
        status, reason = str(batch["status"][i]), str(batch["reason"][i])
        h, w = int(batch["height"][i]), int(batch["width"][i])
        out_key = ""
        if status == "ok":
            try:
                size = batch["logits"].shape[-1]
                valid = resized_size(h, w, size, resize_mode) if resize_mode == "pad" else None
                full = resize_logits_numpy(batch["logits"][i], (h, w), valid)
                mask = full > logit_threshold
                stem = str(batch["out"][i])
                out_key = output_key("masks", stem)
                storage.write_bytes(storage.join(output, out_key), _png(mask.astype(np.uint8) * 255, "L"))
                if save_probs:
                    prob = (1.0 / (1.0 + np.exp(-full)) * 255).round().astype(np.uint8)
                    storage.write_bytes(storage.join(output, output_key("probs", stem)), _png(prob, "L"))
                if overlays:
                    storage.write_bytes(storage.join(output, output_key("overlays", stem)), _png(_overlay(batch["data"][i], mask), "RGB"))
            except Exception as exc:  # noqa: BLE001 - a failed write is a row, not a crash
                status, reason, out_key = "write_error", f"{type(exc).__name__}: {exc}", ""
        rows["input_key"].append(str(key))
        rows["output_key"].append(out_key)
        rows["height"].append(h)
        rows["width"].append(w)
        rows["status"].append(status)
        rows["reason"].append(reason)
        rows["fingerprint"].append(fingerprint)
        rows["seconds"].append(float(batch["seconds"][i]) + time.perf_counter() - t0)
        rows["actor"].append(str(batch["actor"][i]))
    return {k: np.asarray(v, dtype=object if MANIFEST_SCHEMA.field(k).type == pa.string() else None) for k, v in rows.items()}


# ------------------------------------------------------------------- manifest
class ManifestWriter:
    """Writes manifest rows as whole Parquet parts under ``manifest/run-<id>/``."""

    def __init__(self, output: str, run_id: str, flush_rows: int):
        self.prefix = storage.join(output, "manifest", f"run-{run_id}")
        self.flush_rows = flush_rows
        self.pending: List[Dict[str, list]] = []
        self.pending_rows = 0
        self.parts = 0
        self.counts: Counter = Counter()
        self.rows = 0

    def add(self, rows: Dict[str, Iterable]) -> None:
        cols = {k: list(rows[k]) for k in MANIFEST_SCHEMA.names}
        n = len(cols["input_key"])
        if not n:
            return
        self.counts.update(cols["status"])
        self.rows += n
        self.pending.append(cols)
        self.pending_rows += n
        if self.pending_rows >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        merged = {k: sum((p[k] for p in self.pending), []) for k in MANIFEST_SCHEMA.names}
        table = pa.Table.from_pydict(merged, schema=MANIFEST_SCHEMA)
        buf = io.BytesIO()
        pq.write_table(table, buf)
        storage.write_bytes(storage.join(self.prefix, f"part-{self.parts:05d}.parquet"), buf.getvalue())
        self.parts += 1
        self.pending, self.pending_rows = [], 0


def read_manifests(output: str, columns: Optional[List[str]] = None) -> Optional[pa.Table]:
    """All manifest rows under ``<output>/manifest`` (unreadable parts are skipped)."""
    fs, path = storage.fsspec_filesystem(storage.join(output, "manifest"))
    if not fs.exists(path):
        return None
    tables = []
    for p in sorted(fs.find(path)):
        if not p.endswith(".parquet"):
            continue
        try:
            with fs.open(p, "rb") as f:
                tables.append(pq.read_table(f, columns=columns))
        except Exception as exc:  # noqa: BLE001 - a part cut short by a kill
            log.warning("skipping unreadable manifest part %s: %s", p, exc)
    return pa.concat_tables(tables) if tables else None


def finished_keys(output: str, fingerprint: str) -> Set[str]:
    """Input keys already segmented (status ok) by the model with this fingerprint."""
    table = read_manifests(output, columns=["input_key", "status", "fingerprint"])
    if table is None:
        return set()
    keys, status, fps = table.column("input_key").to_pylist(), table.column("status").to_pylist(), table.column("fingerprint").to_pylist()
    return {k for k, s, f in zip(keys, status, fps) if s == "ok" and f == fingerprint}


# ------------------------------------------------------------------------ run
@dataclass
class SegmentSummary:
    run_id: str
    fingerprint: str
    listed: int
    skipped_done: int
    processed: int
    ok: int
    failed: Dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    manifest: str = ""
    output: str = ""
    actors: List[str] = field(default_factory=list)
    # When the first results reached the driver (start-up: listing, actors, model loading)
    # and how many rows they were; the rest is the steady-state part of the run.
    first_output_s: Optional[float] = None
    first_output_rows: int = 0

    @property
    def steady_images_per_s(self) -> Optional[float]:
        if self.first_output_s is None or self.seconds <= self.first_output_s:
            return None
        return (self.processed - self.first_output_rows) / (self.seconds - self.first_output_s)

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    @property
    def failed_fraction(self) -> float:
        return self.failed_total / self.processed if self.processed else 0.0

    @property
    def images_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0


def _cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def run_segmentation(cfg: SegmentConfig, progress: bool = True) -> SegmentSummary:
    """Segment every input that has no finished output for this model; see the module doc."""
    import ray
    import ray.data

    adapter_uri = resolve_checkpoint(cfg.checkpoint)
    adapter_bytes = storage.read_bytes(adapter_uri)
    from ..modeling.weights import read_safetensors_metadata

    meta = read_safetensors_metadata(adapter_bytes)
    img_size = int(json.loads(meta["config"])["img_size"])
    fingerprint = model_fingerprint(adapter_bytes, cfg)

    listing: InputListing = list_input(cfg.input, cfg.input_format, cfg.split)
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    writer = ManifestWriter(cfg.output, run_id, cfg.manifest_flush_rows)
    done = set() if cfg.force else finished_keys(cfg.output, fingerprint)

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"))
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress

    gpus = cfg.gpus_per_actor if cfg.gpus_per_actor is not None else (1.0 if _cluster_gpus() > 0 else 0.0)
    max_actors = cfg.max_actors or max(cfg.min_actors, int(_cluster_gpus() // gpus) if gpus > 0 else 1)

    t0 = time.perf_counter()
    ds = None
    if listing.format == "parquet":
        from ..data.reading import iter_records, read_split

        ids = [i for b in iter_records(listing.root, listing.split, columns=["image_id"], batch_size=65536) for i in b["image_id"]]
        listed = len(ids)
        skipped_done = sum(1 for i in ids if i in done)
        if skipped_done < listed:
            ds = read_split(listing.root, listing.split, columns=["image_id", "image"]).map_batches(
                _parquet_rows, batch_format="numpy"
            )
            if done:
                ds = ds.filter(lambda r: r["key"] not in done)
    elif listing.format == "tar":
        stems = {posixpath.splitext(k)[0] for k in listing.keys}
        skipped_done = sum(1 for k in done if any(p in stems for p in _prefixes(k)))
        if listing.keys:
            ds = ray.data.from_items([{"key": k} for k in listing.keys]).flat_map(
                tar_stage, fn_kwargs={"root": listing.root, "done": done}
            )
        listed = None  # members are known only after reading the archives
    else:
        listed = len(listing.keys)
        skipped_done = 0
        stems = output_stems(listing.keys)
        todo = []
        for key in listing.keys:
            why = unsafe_key_reason(key)
            if why:
                writer.add({"input_key": [key], "output_key": [""], "height": [0], "width": [0], "status": [UNSAFE_KEY],
                            "reason": [why], "fingerprint": [fingerprint], "seconds": [0.0], "actor": [""]})
            elif key in done:
                skipped_done += 1
            else:
                todo.append(key)
        if todo:
            ds = ray.data.from_items([{"key": k, "out": stems[k]} for k in todo]).map_batches(
                read_stage, fn_kwargs={"root": listing.root}, batch_size=cfg.read_batch_size, batch_format="numpy"
            )

    actors: Set[str] = set()
    first_output: Optional[tuple] = None  # (seconds after start, rows) of the first results
    if ds is not None:
        ds = ds.map_batches(
            decode_stage,
            fn_kwargs={"img_size": img_size, "resize_mode": cfg.resize_mode, "max_pixels": cfg.max_pixels, "keep_bytes": cfg.overlays},
            batch_size=cfg.batch_size,
            batch_format="numpy",
            # Half a CPU per decode task. The resource shape differs from the model actors',
            # which keeps Ray Data from fusing decode into them: decode runs in its own
            # tasks and overlaps with inference.
            num_cpus=0.5,
        )
        ds = ds.map_batches(
            Segmenter,
            fn_constructor_kwargs={
                "adapter_uri": adapter_uri, "sam_checkpoint": cfg.sam_checkpoint, "bf16": cfg.bf16,
                "attention": cfg.attention, "compile": cfg.compile,
            },
            compute=ray.data.ActorPoolStrategy(min_size=cfg.min_actors, max_size=max_actors),
            num_gpus=gpus,
            num_cpus=cfg.cpus_per_actor,
            batch_size=cfg.batch_size,
            batch_format="numpy",
        )
        ds = ds.map_batches(
            postprocess_stage,
            fn_kwargs={
                "output": cfg.output, "fingerprint": fingerprint, "threshold": cfg.threshold,
                "resize_mode": cfg.resize_mode, "save_probs": cfg.save_probs, "overlays": cfg.overlays,
            },
            batch_size=cfg.batch_size,
            batch_format="numpy",
            # Half a CPU, like decode: a whole-CPU task would wait behind the stream of
            # half-CPU decode tasks (never a whole CPU free) and results would pile up in
            # the object store until decoding ended.
            num_cpus=0.5,
        )
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            if first_output is None:
                first_output = (time.perf_counter() - t0, len(batch["input_key"]))
            actors.update(a for a in batch["actor"] if a)
            writer.add(batch)
    writer.flush()
    elapsed = time.perf_counter() - t0
    processed = writer.rows
    if listed is None:
        listed = processed + skipped_done
    failed = {k: v for k, v in writer.counts.items() if k != "ok"}
    return SegmentSummary(
        run_id=run_id,
        fingerprint=fingerprint,
        listed=listed,
        skipped_done=skipped_done,
        processed=processed,
        ok=writer.counts.get("ok", 0),
        failed=failed,
        seconds=elapsed,
        manifest=writer.prefix,
        output=cfg.output,
        actors=sorted(actors),
        first_output_s=first_output[0] if first_output else None,
        first_output_rows=first_output[1] if first_output else 0,
    )


def _parquet_rows(batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    n = len(batch["image_id"])
    return {"key": batch["image_id"], "out": batch["image_id"], "data": batch["image"], "read_error": np.asarray([""] * n, dtype=object)}


def _prefixes(key: str) -> List[str]:
    """``a/b/c.jpg`` -> ``["a", "a/b"]``: the archive stems a member key could come from."""
    parts = key.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]
