"""``build_model``: a SAM-Adapter from a registry entry (``arch.py``), official SAM weights
and an adapter checkpoint."""

from __future__ import annotations

import contextlib
import logging
from functools import partial
from typing import Optional

import torch
from torch.overrides import TorchFunctionMode
from .sam_modules import PromptEncoder, TwoWayTransformer
from torch import nn

from .arch import ARCHS, ArchConfig, Sam2ArchConfig, arch_config  # noqa: F401 - re-exported
from .attention import set_attention
from .encoder import AdaptedImageEncoder
from .resize import native_zero_tables
from .sam_adapter import BatchedMaskDecoder, SamAdapter

log = logging.getLogger(__name__)


# In-place random initialisers (Tensor methods, and torch.nn.init's functions, which reach a
# function mode as themselves): on a ``meta`` tensor they draw nothing unless replayed.
_RANDOM_INITS = frozenset(
    [getattr(torch.Tensor, n) for n in ("uniform_", "normal_", "bernoulli_", "exponential_", "geometric_",
                                         "cauchy_", "log_normal_", "random_")]
    + [getattr(nn.init, n) for n in ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_",
                                     "xavier_uniform_", "xavier_normal_", "orthogonal_", "sparse_")])


# Of those, the ones that draw one 32-bit word of the generator per element of a float32
# tensor (a single ``uniform_`` over it): replayed as ``random_`` on int32, which advances
# the generator exactly as far (a test compares whole models) without the float transform
# or float stores (vit_b's replay: 0.34 -> 0.19 s on 2 vCPUs).
_ONE_WORD_PER_FLOAT32 = frozenset([torch.Tensor.uniform_, nn.init.uniform_, nn.init.kaiming_uniform_,
                                   nn.init.xavier_uniform_])


class _ReplayDraws(TorchFunctionMode):
    """Random initialisation of a ``meta`` tensor makes the same draws from the CPU
    generator as it would on a CPU tensor of that shape (and throws them away): modules
    built on ``meta`` leave the generator where a real build leaves it, so whatever is
    built after them (the adapter's prompt generator) gets the same values. The draws land
    in one reused buffer per dtype (a contiguous view of the tensor's shape: the same draws
    as a fresh tensor), not in a fresh allocation per tensor: at vit_h the base is ~640M
    values, whose page faults cost more than the draws."""

    def __init__(self):
        super().__init__()
        self._buffers = {}

    def _stand_in(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        buf = self._buffers.get(dtype)
        if buf is None or buf.numel() < t.numel():
            buf = self._buffers[dtype] = torch.empty(t.numel(), dtype=dtype)
        return buf[: t.numel()].view(t.shape)

    def __exit__(self, *exc):
        self._buffers.clear()
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RANDOM_INITS:
            # nn.init's functions arrive with the tensor as a keyword, Tensor methods as self
            t = args[0] if args else kwargs.get("tensor")
            if isinstance(t, torch.Tensor) and t.is_meta and func in _ONE_WORD_PER_FLOAT32 and t.dtype == torch.float32:
                if t.numel():  # (kaiming/xavier draw nothing for an empty tensor either)
                    generator = next((a for a in args if isinstance(a, torch.Generator)), kwargs.get("generator"))
                    self._stand_in(t, torch.int32).random_(generator=generator)
            elif isinstance(t, torch.Tensor) and t.is_meta:
                stand_in = self._stand_in(t, t.dtype)
                if args:
                    func(stand_in, *args[1:], **kwargs)
                else:
                    func(**{**kwargs, "tensor": stand_in})
        return func(*args, **kwargs)


def build_from_config(cfg: ArchConfig, base_on_meta: bool = False) -> SamAdapter:
    """Construct a randomly initialised SamAdapter (deterministic from ``cfg.init_seed``).

    ``base_on_meta``: every tensor an official SAM checkpoint holds (the encoder's ViT, the
    prompt encoder, the mask decoder) is laid out on the ``meta`` device, with no memory
    and no initialisation, for ``load_sam_checkpoint(..., assign=True)`` to fill; the
    adapter's prompt generator is initialised on the CPU exactly as in a full build (the
    base's random draws are replayed, not kept)."""
    if isinstance(cfg, Sam2ArchConfig):
        from .sam2_adapter import build_sam2

        return build_sam2(cfg, base_on_meta=base_on_meta)
    emb = cfg.embedding_size
    base = contextlib.ExitStack()
    if base_on_meta:
        base.enter_context(_ReplayDraws())
        base.enter_context(torch.device("meta"))
    with torch.random.fork_rng(devices=[]), base:
        torch.manual_seed(cfg.init_seed)
        encoder = AdaptedImageEncoder(
            prompt_device="cpu" if base_on_meta else None,
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            out_chans=cfg.out_chans,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=cfg.window_size,
            global_attn_indexes=cfg.global_attn_indexes,
            scale_factor=cfg.scale_factor,
            knowledge=cfg.knowledge,
            learnable_weights=cfg.learnable_weights,
            reference_layout=cfg.reference_layout,
        )
        prompt_encoder = PromptEncoder(
            embed_dim=cfg.out_chans,
            image_embedding_size=(emb, emb),
            input_image_size=(cfg.img_size, cfg.img_size),
            mask_in_chans=16,
        )
        decoder = BatchedMaskDecoder(
            num_multimask_outputs=cfg.num_mask_tokens - 1,
            transformer=TwoWayTransformer(
                depth=cfg.decoder_depth,
                embedding_dim=cfg.out_chans,
                mlp_dim=cfg.decoder_mlp_dim,
                num_heads=cfg.decoder_num_heads,
            ),
            transformer_dim=cfg.out_chans,
            iou_head_depth=cfg.iou_head_depth,
            iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        )
    model = SamAdapter(encoder, prompt_encoder, decoder, config=cfg.to_dict())
    native = ARCHS.get(cfg.name)
    if native is not None and native.img_size != cfg.img_size:  # a random base at another input size
        model.set_native_tables(native_zero_tables(cfg, native.img_size))
    return model


def build_model(
    arch: str,
    *,
    sam_checkpoint: Optional[str] = None,
    adapter_checkpoint: Optional[str] = None,
    reference_checkpoint: Optional[str] = None,
    attention: str = "auto",
    **overrides,
) -> SamAdapter:
    """Build a SAM-Adapter model.

    Args:
        arch: ``vit_h``, ``vit_l``, ``vit_b`` or ``tiny`` (SAM); ``sam2_hiera_t``, ``_s``, ``_b+``,
            ``_l`` or ``sam2_tiny`` (SAM 2: ``sam2_adapter.py``).
        sam_checkpoint: path or fsspec URI of official SAM weights (``sam_vit_*.pth`` key
            layout, or the same keys as ``.safetensors``); for SAM 2 Meta's ``sam2{,.1}_hiera_*.pt``
            or the transformers library's layout (``sam2_weights.py``). Without it (and without a
            reference checkpoint) the base is randomly initialised from ``init_seed``.
        adapter_checkpoint: an adapter checkpoint written by ``save_adapter``; loaded
            after the base weights and checked against them.
        reference_checkpoint: a full state dict saved by the public SAM-Adapter reference
            implementation; switches on ``reference_layout``.
        attention: the encoder's attention path: ``original`` (segment_anything's),
            ``fast`` (``scaled_dot_product_attention``, same weights) or ``auto`` (fast for
            SAM's 14-token windows, original for the tiny debug size; see ``set_attention``).
        **overrides: any :class:`ArchConfig` field (img_size, embed_dim, depth, ...), among
            them ``knowledge`` (the task-knowledge sources, e.g. ``"fft+edges"`` or a list of
            ``{name, weight, ...}``; see ``knowledge.py``) and ``learnable_weights``.

    Returns:
        A :class:`SamAdapter` in train mode with the frozen/trainable split applied.
    """
    from . import weights

    if reference_checkpoint is not None:
        if overrides.get("reference_layout") is False:
            raise ValueError("reference_checkpoint needs reference_layout=True (the reference's token layout)")
        overrides["reference_layout"] = True
    cfg = arch_config(arch, **overrides)
    sam2 = isinstance(cfg, Sam2ArchConfig)
    if sam2 and reference_checkpoint is not None:
        raise ValueError("reference_checkpoint imports the SAM-Adapter reference implementation's vit_* models; "
                         f"{arch} is a SAM 2 architecture")
    # with SAM's weights, the base is never initialised only to be overwritten: it is laid
    # out on `meta` and takes the checkpoint's tensors (memory-mapped when the file allows)
    on_meta = sam_checkpoint is not None and reference_checkpoint is None
    model = build_from_config(cfg, base_on_meta=on_meta)
    if not sam2:  # (SAM 2's Hiera attends with SDPA, the library's)
        set_attention(model, attention, cfg.window_size)
    if sam_checkpoint is not None:
        weights.load_sam_checkpoint(model, sam_checkpoint, assign=on_meta)
    if reference_checkpoint is not None:
        weights.load_reference_checkpoint(model, reference_checkpoint)
    if sam_checkpoint is None and reference_checkpoint is None:
        level = logging.INFO if arch == "tiny" else logging.WARNING
        log.log(
            level,
            "%s: no SAM checkpoint given; base encoder and decoder are randomly initialised "
            "(seed %d). Results on real images are meaningless without --sam-checkpoint.",
            arch,
            cfg.init_seed,
        )
    if adapter_checkpoint is not None:
        weights.load_adapter(model, adapter_checkpoint)
    return model


def build_from_adapter(adapter_checkpoint: str, sam_checkpoint: Optional[str] = None, attention: str = "auto",
                       img_size: Optional[int] = None) -> SamAdapter:
    """The model an adapter file describes (architecture from its metadata), in eval mode:
    what evaluation, the segment job and the benchmark load. Official SAM weights given as
    a URI are fetched once per machine (``storage.local_copy``). ``img_size``: run at
    another input size than the adapter was trained at (a warning; ``resize.py``)."""
    import json

    from .. import storage
    from . import weights

    _, meta = weights.read_adapter(adapter_checkpoint)
    config = json.loads(meta["config"])
    arch = config.pop("name")
    if img_size:
        config["img_size"] = int(img_size)
    sam_path = storage.local_copy(sam_checkpoint) if sam_checkpoint else None
    return build_model(arch, sam_checkpoint=sam_path, adapter_checkpoint=adapter_checkpoint, attention=attention,
                       **config).eval()


def check_checkpoints(adapter_checkpoint: str, sam_checkpoint: Optional[str] = None,
                      img_size: Optional[int] = None) -> dict:
    """Open and check what ``build_from_adapter`` would load, without building the model's
    weights (the model is laid out on the ``meta`` device) or unpickling anything but
    tensors: the adapter's format and architecture, and the SAM weights' keys and shapes
    against that architecture. What jobs call before they start Ray work; a
    ``CheckpointError`` names the file. Returns the adapter's architecture config."""
    import json

    import torch

    from .. import storage
    from . import weights

    _, meta = weights.read_adapter(adapter_checkpoint)
    try:
        config = json.loads(meta["config"])
    except (KeyError, ValueError) as exc:
        raise weights.CheckpointError(f"{adapter_checkpoint}: no architecture in its metadata ({exc})") from None
    if img_size:
        config = {**config, "img_size": int(img_size)}
        try:
            arch_config(config["name"], **{k: v for k, v in config.items() if k != "name"})
        except ValueError as exc:
            raise weights.CheckpointError(f"{adapter_checkpoint}: cannot run at input size {img_size}: {exc}") from None
    if sam_checkpoint:
        if not storage.exists(sam_checkpoint):
            raise weights.CheckpointError(f"{sam_checkpoint}: no such file (--sam-checkpoint)")
        arch = dict(config)
        name = arch.pop("name")
        with torch.device("meta"):
            model = build_from_config(arch_config(name, **arch))
        weights.check_sam_checkpoint(model, sam_checkpoint, storage.local_copy(sam_checkpoint))
    return config
