"""Weights: official SAM checkpoints, adapter checkpoints, reference-implementation imports.

Checkpoints are read with ``torch.load(..., weights_only=True)`` or from safetensors:
a checkpoint never runs code when it is loaded. Every path is a local path or any
fsspec URI (``s3://...``).
"""

from __future__ import annotations

import io
import json
import logging
import re
import struct
from typing import TYPE_CHECKING, Dict, Iterable, Optional

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from .. import storage
from .arch import ARCHS, ArchConfig, config_from_dict
from .classes import extend_mask_tokens
from .knowledge import describe_knowledge
from .resize import describe as describe_resize
from .resize import resize_position_tables
from .arch import PROMPT_PREFIX as _PROMPT_PREFIX

if TYPE_CHECKING:  # annotations only: the model imports this module, not the other way round
    from .sam_adapter import SamAdapter

log = logging.getLogger(__name__)

ADAPTER_FORMAT = "samadapter-adapter"
ADAPTER_VERSION = "1"
# Tensors SAM's model registers but does not persist; tolerated if a file has them.
_IGNORED_SAM_KEYS = ("pixel_mean", "pixel_std")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded onto the model; the message says why and what to do."""


# ----------------------------------------------------------------------- reading
def _unwrap(obj, uri: str) -> Dict[str, torch.Tensor]:
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("model", "state_dict", "module"):
            if isinstance(obj.get(key), dict):
                return _unwrap(obj[key], uri)
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{uri}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    return obj


def load_state_dict(uri: str) -> Dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``torch.save`` file, safely.

    Raises:
        CheckpointError: when the file needs unpickling of arbitrary objects (code), or
            is not a state dict.
    """
    data = storage.read_bytes(uri)
    if str(uri).endswith(".safetensors"):
        return safetensors_load(data)
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for forbidden globals, RuntimeError, ...
        raise _refused(uri, exc) from None
    return _unwrap(obj, uri)


def _refused(uri: str, exc: BaseException) -> CheckpointError:
    return CheckpointError(
        f"{uri}: refused to load: it is not a plain tensor checkpoint readable with "
        f"weights_only=True ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
        "Checkpoints that need arbitrary unpickling could run code and are never loaded; "
        "re-save the weights as a plain state dict or as .safetensors."
    )


# ------------------------------------------------------------ official SAM files
def _describe_checkpoint(sd: Dict[str, torch.Tensor]) -> Optional[str]:
    """Guess the registry arch that fits an official-layout state dict."""

    proj = sd.get("image_encoder.patch_embed.proj.weight")
    if proj is None:
        return None
    embed_dim = proj.shape[0]
    depth = len({m.group(1) for k in sd if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))})
    pos = sd.get("image_encoder.pos_embed")
    img_size = pos.shape[1] * proj.shape[-1] if pos is not None else None
    fits = [n for n, a in ARCHS.items() if isinstance(a, ArchConfig) and a.embed_dim == embed_dim and a.depth == depth]
    desc = f"embed_dim {embed_dim}, depth {depth}" + (f", img_size {img_size}" if img_size else "")
    if fits:
        extra = f", img_size={img_size}" if img_size and img_size != ARCHS[fits[0]].img_size else ""
        return f"the checkpoint has {desc}: build it with arch={fits[0]!r}{extra}"
    return f"the checkpoint has {desc}, which matches no registered arch; pass those sizes as overrides"


def _check_keys(
    model: SamAdapter,
    sd: Dict[str, torch.Tensor],
    uri: str,
    allowed_missing: Iterable[str],
) -> None:
    own = model.state_dict()
    unexpected = sorted(set(sd) - set(own))
    if unexpected:
        hint = _describe_checkpoint(sd)
        raise CheckpointError(
            f"{uri}: unexpected key {unexpected[0]!r}"
            + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
            + (f"; {hint}" if hint else "")
        )
    allowed = set(allowed_missing)
    missing = sorted(set(own) - set(sd) - allowed)
    if missing:
        hint = _describe_checkpoint(sd)
        raise CheckpointError(
            f"{uri}: missing key {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + (f"; {hint}" if hint else "; is this a complete SAM checkpoint?")
        )
    for key, tensor in sd.items():
        if tuple(tensor.shape) != tuple(own[key].shape):
            hint = _describe_checkpoint(sd)
            raise CheckpointError(
                f"{uri}: shape mismatch at {key!r}: checkpoint {tuple(tensor.shape)}, model "
                f"{tuple(own[key].shape)} (arch {model.config.get('name')})" + (f"; {hint}" if hint else "")
            )


def _load_exact(model: SamAdapter, sd: Dict[str, torch.Tensor], expected_missing: set, uri: str,
                assign: bool = False, native_tables: Optional[Dict[str, torch.Tensor]] = None) -> None:
    if assign:  # the file's tensors become the model's (cast where the file's dtype differs)
        own = model.state_dict(keep_vars=True)
        sd = {k: v.to(own[k].dtype) for k, v in sd.items()}
    result = model.load_state_dict(sd, strict=False, assign=assign)
    # Invariants after _check_keys: nothing unexpected, and only the known keys missing.
    assert not result.unexpected_keys, result.unexpected_keys
    assert set(result.missing_keys) == expected_missing, sorted(set(result.missing_keys) ^ expected_missing)
    if assign:
        model.freeze()  # parameters that came from the file: trainable or not by name, as before
        left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if left:
            raise CheckpointError(f"{uri}: {left[0]!r} (and {len(left) - 1} more) not in the file")
    model.set_native_tables(native_tables or {})  # (and forgets the fingerprint of the base it had)
    log.info("loaded %d tensors from %s", len(sd), uri)


def _mapped_state_dict(uri: str, path: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """``load_state_dict(uri)``, memory-mapped where it can be (a local zip-format
    ``torch.save`` file, or .safetensors; ``path``: a local copy of ``uri``): the tensors
    are the file's pages, read on first use and shared by every process on the machine
    that maps the same file."""
    if path is None:
        if not storage.is_local(uri):
            return load_state_dict(uri)
        path = storage.local_path(uri)
    if str(uri).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise _refused(uri, exc) from None
        return load_state_dict(uri)  # an old-format file cannot be mapped: read whole
    except Exception as exc:  # noqa: BLE001 - UnpicklingError for forbidden globals, ...
        raise _refused(uri, exc) from None
    return _unwrap(obj, uri)


def load_sam_checkpoint(model: SamAdapter, uri: str, assign: bool = False) -> None:
    """Load official SAM weights (``sam_vit_{h,l,b}_*.pth`` key layout, or .safetensors).

    Every key of the file is consumed, including the prompt encoder's positional matrix and
    no-mask embedding. The keys left missing must be exactly the adapter's prompt-generator
    parameters; an unexpected key or a shape mismatch raises :class:`CheckpointError`
    naming the key and the arch that fits.

    ``assign``: the model's base lives on the ``meta`` device (``build_from_config(...,
    base_on_meta=True)``) and takes the file's tensors themselves, memory-mapped where the
    file allows, instead of copying them into initialised ones.

    A checkpoint made for another input size (SAM's are 1024) loads onto a model of this
    size: its position tables are resampled (``resize.py``).

    A SAM 2 model takes SAM 2's files (``sam2_weights.py``).
    """
    if model.config.get("family") == "sam2":
        from .sam2_weights import load_sam2_checkpoint

        return load_sam2_checkpoint(model, uri, assign=assign)
    sd, prompt_keys, resized = _sam_state(model, _mapped_state_dict(uri) if assign else load_state_dict(uri), uri)
    _load_exact(model, sd, prompt_keys, uri, assign=assign, native_tables=resized)
    if resized:
        log.info("%s: %s", uri, describe_resize(resized, {k: tuple(v.shape) for k, v in sd.items()},
                                                model.config.get("patch_size", 16)))


def _sam_state(model: SamAdapter, sd: Dict[str, torch.Tensor], uri: str):
    """(the file's tensors to load, the keys left to the adapter, the file's own position
    tables where they were resampled to the model's input size) after every check."""
    sd = dict(sd)
    for key in _IGNORED_SAM_KEYS:
        sd.pop(key, None)
    prompt_keys = {k for k in model.state_dict() if k.startswith(_PROMPT_PREFIX)}
    stray = sorted(k for k in sd if k.startswith(_PROMPT_PREFIX))
    if stray:
        raise CheckpointError(
            f"{uri}: holds prompt-generator tensors ({stray[0]!r}); it is not an official SAM checkpoint. "
            "Use adapter_checkpoint= for adapter files or reference_checkpoint= for the reference implementation's"
        )
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    sd, resized = resize_position_tables(sd, shapes)
    sd, added = extend_mask_tokens(sd, shapes)
    if added:
        log.info("%s: %d mask tokens added for %d classes (copies of SAM's; classes.py)", uri, added,
                 model.num_classes)
    _check_keys(model, sd, uri, allowed_missing=prompt_keys)
    return sd, prompt_keys, resized


def check_sam_checkpoint(model: SamAdapter, uri: str, path: str) -> None:
    """Check official SAM weights against ``model`` (which may live on the ``meta``
    device) without loading the tensors' data: the file (a local copy at ``path``) is
    memory-mapped, read with ``weights_only=True`` (nothing in it is unpickled but
    tensors), and its keys and shapes compared; a ``CheckpointError`` names ``uri``. A SAM 2
    model: SAM 2's checks (``sam2_weights.py``)."""
    if model.config.get("family") == "sam2":
        from .sam2_weights import _sam2_state

        _sam2_state(model, tensors_to_check(uri, path), uri)
        return
    _sam_state(model, tensors_to_check(uri, path), uri)


def tensors_to_check(uri: str, path: str) -> Dict[str, torch.Tensor]:
    """A checkpoint's tensors for checking keys and shapes, without reading their data: a
    ``torch.save`` file memory-mapped (``weights_only``), a ``.safetensors`` file as ``meta``
    tensors of its header's shapes (``path``: a local copy of ``uri``)."""
    if not str(uri).endswith(".safetensors"):
        return _mapped_state_dict(uri, path)
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    return {k: torch.empty(v, device="meta") for k, v in shapes.items()}


# -------------------------------------------------------------- adapter files
def _adapter_metadata(model: SamAdapter) -> Dict[str, str]:
    return {
        "format": ADAPTER_FORMAT,
        "version": ADAPTER_VERSION,
        "config": json.dumps(model.config, sort_keys=True),
        "base_fingerprint": model.base_fingerprint(),
    }


def adapter_bytes(model: SamAdapter, extra_metadata: Optional[Dict[str, str]] = None) -> bytes:
    """The adapter checkpoint as bytes (safetensors with config + base fingerprint)."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.adapter_state_dict().items()}
    meta = _adapter_metadata(model)
    meta.update(extra_metadata or {})
    return safetensors_save(tensors, metadata=meta)


def save_adapter(model: SamAdapter, uri: str, extra_metadata: Optional[Dict[str, str]] = None) -> None:
    """Write only the trained tensors (prompt generator + mask decoder) to ``uri``."""
    storage.write_bytes(uri, adapter_bytes(model, extra_metadata))
    log.info("adapter checkpoint written to %s", uri)


def read_safetensors_metadata(data: bytes) -> Dict[str, str]:
    """The ``__metadata__`` of a safetensors buffer (header: u64 length + JSON)."""
    if len(data) < 8:
        raise CheckpointError("not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8 : 8 + n])
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError("not a safetensors file (bad header)") from None
    return dict(header.get("__metadata__") or {})


def read_adapter(uri: str):
    """(tensors, metadata) of an adapter checkpoint, validated for format."""
    data = storage.read_bytes(uri)
    try:
        meta = read_safetensors_metadata(data)
    except CheckpointError as exc:
        raise CheckpointError(f"{uri}: {exc}; an adapter checkpoint is a .safetensors file written by "
                              "jobs/train.py") from None
    if meta.get("format") != ADAPTER_FORMAT:
        raise CheckpointError(
            f"{uri}: not a samadapter adapter checkpoint (metadata format={meta.get('format')!r}); "
            "official SAM weights go to sam_checkpoint=, reference-implementation files to reference_checkpoint="
        )
    return safetensors_load(data), meta


def load_adapter(model: SamAdapter, uri: str) -> Dict[str, str]:
    """Load an adapter checkpoint onto a model built with the same arch and base weights.

    Returns:
        The checkpoint's metadata.

    Raises:
        CheckpointError: on a different architecture (names the differing fields) or a
            different base (fingerprint of the frozen SAM weights).
    """
    tensors, meta = read_adapter(uri)
    saved_cfg = json.loads(meta.get("config", "{}"))
    try:  # adapter files from before knowledge sources record the legacy fields
        saved_cfg = config_from_dict(saved_cfg).to_dict()
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{uri}: its architecture config cannot be read ({exc})") from None
    ignore = {"name", "init_seed", "knowledge", "img_size"}  # another input size: a warning below
    diffs = [
        f"{k}={saved_cfg.get(k)!r} (model has {model.config.get(k)!r})"
        for k in sorted(set(saved_cfg) | set(model.config))
        if k not in ignore and saved_cfg.get(k) != model.config.get(k)
    ]
    if saved_cfg["knowledge"] != model.config.get("knowledge"):
        diffs.insert(0, f"knowledge sources {describe_knowledge(saved_cfg['knowledge'])} "
                        f"(model has {describe_knowledge(model.config.get('knowledge') or [])})")
    if diffs:
        raise CheckpointError(
            f"{uri}: adapter was trained for arch {saved_cfg.get('name')!r} with a different architecture: "
            + "; ".join(diffs)
            + f". Build the model with arch={saved_cfg.get('name')!r} and those values"
        )
    want = meta.get("base_fingerprint")
    have = model.base_fingerprint()
    if want != have:
        raise CheckpointError(
            f"{uri}: adapter was trained on base SAM weights with fingerprint {want}, but this model's "
            f"base has {have}. Load the same SAM checkpoint that was used in training "
            "(sam_checkpoint= / --sam-checkpoint), or none if it was trained from the random base"
        )
    if saved_cfg.get("img_size") != model.config.get("img_size"):
        log.warning("%s: adapter trained at input size %s, running at %s (position tables resampled); "
                    "check its accuracy at this size before relying on it", uri, saved_cfg.get("img_size"),
                    model.config.get("img_size"))
    own = model.adapter_state_dict()
    if set(tensors) != set(own):
        odd = sorted(set(tensors) ^ set(own))
        raise CheckpointError(f"{uri}: adapter tensors do not match the model (first difference: {odd[0]!r})")
    for key, t in tensors.items():
        if tuple(t.shape) != tuple(own[key].shape):
            raise CheckpointError(f"{uri}: shape mismatch at {key!r}: {tuple(t.shape)} vs {tuple(own[key].shape)}")
    result = model.load_state_dict(tensors, strict=False)
    assert not result.unexpected_keys
    log.info("adapter loaded from %s", uri)
    return meta


# ------------------------------------------------- reference implementation
_REFERENCE_RENAMES = [
    (re.compile(r"^image_encoder\.prompt_generator\.shared_mlp\."), _PROMPT_PREFIX + "up."),
    (re.compile(r"^image_encoder\.prompt_generator\.embedding_generator\."), _PROMPT_PREFIX + "embedding_proj."),
    (re.compile(r"^image_encoder\.prompt_generator\.lightweight_mlp_(\d+)\.0\."), _PROMPT_PREFIX + r"tune.\1."),
    (re.compile(r"^image_encoder\.prompt_generator\.prompt_generator\.proj\."), _PROMPT_PREFIX + "handcrafted_embed."),
    (re.compile(r"^pe_layer\."), "prompt_encoder.pe_layer."),
    (re.compile(r"^no_mask_embed\."), "prompt_encoder.no_mask_embed."),
]
# The reference model has no point/box/mask prompt modules; they stay unused here.
_REFERENCE_ABSENT = re.compile(
    r"^prompt_encoder\.(point_embeddings\.|not_a_point_embed\.|mask_downscaling\.)"
)


def reference_to_samadapter_keys(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename a reference-implementation state dict to this package's key layout."""
    out = {}
    for key, tensor in sd.items():
        new = key
        for pattern, repl in _REFERENCE_RENAMES:
            if pattern.match(key):
                new = pattern.sub(repl, key)
                break
        out[new] = tensor
    return out


def load_reference_checkpoint(model: SamAdapter, uri: str) -> None:
    """Import a full state dict saved by the public SAM-Adapter reference implementation.

    The model must be built with ``reference_layout=True`` (``build_model`` does this for
    ``reference_checkpoint=``) so that its outputs reproduce that implementation's.
    """
    if not model.image_encoder.prompt_generator.reference_layout:
        raise CheckpointError(
            "reference checkpoints need the reference token layout: build with reference_checkpoint= "
            "or reference_layout=True"
        )
    sd = reference_to_samadapter_keys(load_state_dict(uri))
    for key in _IGNORED_SAM_KEYS:
        sd.pop(key, None)
    absent = {k for k in model.state_dict() if _REFERENCE_ABSENT.match(k)}
    _check_keys(model, sd, uri, allowed_missing=absent)
    _load_exact(model, sd, absent - set(sd), uri)
