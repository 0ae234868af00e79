"""Task-knowledge sources of the SAM-Adapter prompt generator: F = sum_j w_j F_j.

The paper's adapters inject task-specific knowledge F that "can be features extracted from
the dataset (texture or frequency information), handcrafted rules, or combinations of
several kinds". Here every kind is a source: a module that maps the normalised input images
(B x 3 x S x S) and/or the encoder's patch embeddings (B x H x W x C) to B x H x W x d on the
patch grid (H = W = S / patch, d = the prompt generator's width). ``KNOWLEDGE_SOURCES`` is
the registry by name:

- ``fft_highpass`` - the high-frequency component of the image (2-D FFT, a centred square of
  low frequencies of area ``freq_ratio`` removed), patch-embedded (the paper's handcrafted
  source; camouflage hides an object's outline in low-contrast, fine-scale texture).
- ``patch_embedding`` - a Linear of the encoder's own patch embeddings (the paper's
  embedding source).
- ``edges`` - Sobel gradient magnitude per colour channel, patch-embedded (boundary cues
  used by edge-guided COD and polyp networks).
- ``texture`` - local standard deviation of the luminance in windows of several sizes,
  patch-embedded (texture statistics: camouflage matches texture; shadows darken a surface
  but keep its texture).
- ``fft_lowpass`` - the complement of ``fft_highpass``: the smooth illumination component
  (shadow detectors rely on illumination and intensity cues).

A recipe lists its sources with weights and parameters, e.g.
``[{name: fft_highpass, weight: 1.0, freq_ratio: 0.25}, {name: patch_embedding, weight: 1.0}]``
(``DEFAULT_KNOWLEDGE``: exactly the paper's model), or as shorthand ``"fft+edges"``.
Every source's parameters sit at a fixed attribute of the prompt generator
(``ATTRIBUTE``): the two paper sources keep the names adapter checkpoints have always had
(``handcrafted_embed``, ``embedding_proj``), so those files load unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..constants import DEFAULT_KNOWLEDGE  # noqa: F401 - defined torch-free, exported here


@dataclass(frozen=True)
class SourceDims:
    """What every source is built from: the encoder's token width ``embed_dim``, the
    prompt generator's width ``dim`` and the ``patch_size`` of the token grid."""

    embed_dim: int
    dim: int
    patch_size: int
    reference_layout: bool = False


def high_pass_filter(images: torch.Tensor, freq_ratio: float) -> torch.Tensor:
    """The high spatial frequencies of ``images``: the 2-D spectrum is centre-shifted and a
    centred square of low frequencies whose area is ``freq_ratio`` of the spectrum is zeroed
    (for 1024x1024 and 0.25 that is a 512x512 square); the inverse transform's real part is
    returned in absolute value.

    Args:
        images: B x C x H x W float tensor.
        freq_ratio: fraction of the spectrum's area in the low-frequency square, in [0, 1).

    Returns:
        B x C x H x W tensor, non-negative, same dtype as the input (computed in fp32).
    """
    return _frequency_band(images, freq_ratio, keep_square=False)


def low_pass_filter(images: torch.Tensor, freq_ratio: float) -> torch.Tensor:
    """The complement of :func:`high_pass_filter`: only the centred low-frequency square
    (``freq_ratio`` of the spectrum's area) is kept."""
    return _frequency_band(images, freq_ratio, keep_square=True)


def _frequency_band(images: torch.Tensor, freq_ratio: float, keep_square: bool) -> torch.Tensor:
    dtype = images.dtype
    x = images.float()
    h, w = x.shape[-2:]
    half = int((h * w * freq_ratio) ** 0.5 // 2)
    if torch.onnx.is_in_onnx_export():
        return _frequency_band_by_products(x, half, keep_square).to(dtype)
    spectrum = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))
    if half > 0 or keep_square:
        keep = torch.full((h, w), 0.0 if keep_square else 1.0, dtype=x.dtype, device=x.device)
        keep[h // 2 - half : h // 2 + half, w // 2 - half : w // 2 + half] = 1.0 if keep_square else 0.0
        spectrum = spectrum * keep
    out = torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1))).real.abs()
    return out.to(dtype)


def _band_operator(n: int, half: int):
    """(real, imaginary) parts of the n x n matrix P = F^-1 diag(a) F, F the DFT and a the
    centred band of 2 * half frequencies (in fftshift's order), as float32 tensors (computed
    in float64 with numpy: constants of an exported graph, not traced FFTs)."""
    import numpy as np

    band = np.zeros(n)
    band[n // 2 - half : n // 2 + half] = 1.0
    p = np.fft.ifft(np.fft.ifftshift(band)[:, None] * np.fft.fft(np.eye(n), axis=0), axis=0)
    return torch.from_numpy(p.real.astype(np.float32)), torch.from_numpy(p.imag.astype(np.float32))


def _frequency_band_by_products(x: torch.Tensor, half: int, keep_square: bool) -> torch.Tensor:
    """``_frequency_band`` without complex numbers, for ONNX export: the square band of the
    2-D spectrum is the product of a band along each axis, so the band-limited image is
    P_h X P_w^T, whose real part is Re P_h X Re P_w^T - Im P_h X Im P_w^T (X real); the
    high-pass image is X minus it. Equal to the FFT path within float32 rounding."""
    h, w = x.shape[-2:]
    rh, ih = _band_operator(h, half)
    rw, iw = _band_operator(w, half)
    low = torch.matmul(torch.matmul(rh, x), rw.t()) - torch.matmul(torch.matmul(ih, x), iw.t())
    return (low if keep_square else x - low).abs()


class ImageSource(nn.Conv2d):
    """A source computed from the images: ``image_features`` (B x 3 x S x S -> B x k x S x S)
    embedded on the patch grid by a convolution (k -> d, kernel = stride = patch). It is the
    convolution itself, so its parameters are ``weight`` and ``bias`` at the source's
    attribute (``handcrafted_embed.weight`` for the paper's source)."""

    in_chans = 3

    def __init__(self, dims: SourceDims, in_chans: int) -> None:
        super().__init__(in_chans, dims.dim, kernel_size=dims.patch_size, stride=dims.patch_size)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor, patch_embeddings: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S images -> B x H x W x d."""
        x = self.image_features(images)
        return self._conv_forward(x, self.weight, self.bias).permute(0, 2, 3, 1)


class FFTHighPass(ImageSource):
    """The paper's handcrafted source: |IFFT(high-pass(FFT(image)))|, patch-embedded."""

    ATTRIBUTE = "handcrafted_embed"
    PARAMS = {"freq_ratio": 0.25}

    def __init__(self, dims: SourceDims, freq_ratio: float = 0.25) -> None:
        super().__init__(dims, 3)
        self.freq_ratio = float(freq_ratio)

    @staticmethod
    def check(params: Dict[str, Any]) -> None:
        if not 0 <= params["freq_ratio"] < 1:
            raise ValueError(f"freq_ratio must be in [0, 1), got {params['freq_ratio']}")

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return high_pass_filter(images, self.freq_ratio)


class FFTLowPass(FFTHighPass):
    """The low-frequency complement of ``fft_highpass``: smooth illumination."""

    ATTRIBUTE = "lowpass_embed"

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return low_pass_filter(images, self.freq_ratio)


class PatchEmbedding(nn.Linear):
    """The paper's embedding source: Linear(embed_dim -> d) of the patch embeddings.

    With ``reference_layout`` the B x H x W x C embeddings are read as if they were
    N x C x (H*W), as the public reference implementation does (tokens and channels
    scrambled): only for importing checkpoints trained with it.
    """

    ATTRIBUTE = "embedding_proj"
    PARAMS: Dict[str, Any] = {}

    def __init__(self, dims: SourceDims) -> None:
        super().__init__(dims.embed_dim, dims.dim)
        self.reference_layout = dims.reference_layout

    def forward(self, images: torch.Tensor, patch_embeddings: torch.Tensor) -> torch.Tensor:
        """B x H x W x C patch embeddings -> B x H x W x d."""
        tokens = patch_embeddings
        if self.reference_layout:
            b, h, w, c = tokens.shape
            tokens = tokens.reshape(b, c, h * w).permute(0, 2, 1).reshape(b, h, w, c)
        return super().forward(tokens)


class Edges(ImageSource):
    """Sobel gradient magnitude of every colour channel (reflect-padded), patch-embedded."""

    ATTRIBUTE = "edges_embed"
    PARAMS: Dict[str, Any] = {}

    def __init__(self, dims: SourceDims) -> None:
        super().__init__(dims, 3)
        gx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        kernels = torch.stack([gx, gx.t()]).unsqueeze(1).repeat(3, 1, 1, 1)  # (3*2) x 1 x 3 x 3
        self.register_buffer("sobel", kernels, persistent=False)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        x = F.pad(images, (1, 1, 1, 1), mode="reflect")
        g = F.conv2d(x, self.sobel.to(x.dtype), groups=3)  # B x 6 x S x S: (gx, gy) per channel
        g = g.unflatten(1, (3, 2))
        return torch.sqrt(g.pow(2).sum(2) + 1e-12)


class Texture(ImageSource):
    """Local standard deviation of the luminance in square windows of ``scales`` pixels
    (one channel per scale), patch-embedded."""

    ATTRIBUTE = "texture_embed"
    PARAMS = {"scales": (3, 7, 15)}

    def __init__(self, dims: SourceDims, scales: Sequence[int] = (3, 7, 15)) -> None:
        super().__init__(dims, len(scales))
        self.scales = tuple(int(s) for s in scales)

    @staticmethod
    def check(params: Dict[str, Any]) -> None:
        scales = params["scales"]
        if not scales or any(int(s) < 2 for s in scales):
            raise ValueError(f"texture scales must be window sizes >= 2, got {list(scales)}")

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        lum = images.float().mean(1, keepdim=True)
        out = []
        for k in self.scales:
            pad = (k // 2, (k - 1) // 2, k // 2, (k - 1) // 2)
            mean = F.avg_pool2d(F.pad(lum, pad, mode="replicate"), k, stride=1)
            sq = F.avg_pool2d(F.pad(lum * lum, pad, mode="replicate"), k, stride=1)
            out.append(torch.sqrt((sq - mean * mean).clamp_min(0) + 1e-12))
        return torch.cat(out, 1).to(images.dtype)


KNOWLEDGE_SOURCES: Dict[str, Type[nn.Module]] = {
    "fft_highpass": FFTHighPass,
    "patch_embedding": PatchEmbedding,
    "edges": Edges,
    "texture": Texture,
    "fft_lowpass": FFTLowPass,
}
# Shorthand names (for ``--grid model.overrides.knowledge=fft,embedding,fft+embedding``).
ALIASES = {"fft": "fft_highpass", "highpass": "fft_highpass", "embedding": "patch_embedding",
           "lowpass": "fft_lowpass", "sobel": "edges"}

KnowledgeSpec = Union[str, Sequence[Union[str, Dict[str, Any]]]]


def _source_name(name: Any) -> str:
    key = str(name).strip()
    key = ALIASES.get(key, key)
    if key not in KNOWLEDGE_SOURCES:
        raise ValueError(
            f"unknown knowledge source {name!r}; choose from {sorted(KNOWLEDGE_SOURCES)} "
            f"(shorthands: {', '.join(f'{a}={n}' for a, n in sorted(ALIASES.items()))})"
        )
    return key


def normalize_knowledge(spec: KnowledgeSpec) -> Tuple[Dict[str, Any], ...]:
    """A knowledge list in canonical form: one dict per source with ``name``, ``weight``
    and every parameter (defaults filled in, lists as lists), in the given order.

    Accepts ``"fft+edges"``, ``["fft", "edges"]`` or ``[{name: edges, weight: 0.5}, ...]``.

    Raises:
        ValueError: unknown source or parameter, a source listed twice, no source at all,
            or an invalid parameter value; the message names it.
    """
    if isinstance(spec, str):
        spec = [s for s in spec.split("+") if s.strip()]
    if not isinstance(spec, (list, tuple)):
        raise ValueError(f"knowledge must be a list of sources or 'a+b' shorthand, got {type(spec).__name__}")
    out: List[Dict[str, Any]] = []
    for item in spec:
        entry = {"name": item} if isinstance(item, str) else dict(item) if isinstance(item, dict) else None
        if entry is None or "name" not in entry:
            raise ValueError(f"knowledge source {item!r}: give a name, e.g. {{name: edges, weight: 1.0}}")
        name = _source_name(entry.pop("name"))
        cls = KNOWLEDGE_SOURCES[name]
        weight = entry.pop("weight", 1.0)
        try:
            weight = float(weight)
        except (TypeError, ValueError):
            raise ValueError(f"knowledge source {name}: weight {weight!r} is not a number") from None
        unknown = sorted(set(entry) - set(cls.PARAMS))
        if unknown:
            raise ValueError(f"knowledge source {name}: unknown parameters {unknown}; it takes {sorted(cls.PARAMS) or 'none'}")
        params = {**cls.PARAMS, **entry}
        params = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in params.items()}
        if hasattr(cls, "check"):
            cls.check(params)
        if any(e["name"] == name for e in out):
            raise ValueError(f"knowledge source {name} is listed twice; list each source once")
        out.append({"name": name, "weight": weight, **params})
    if not out:
        raise ValueError(f"no knowledge source given; choose at least one of {sorted(KNOWLEDGE_SOURCES)}")
    return tuple(out)


def describe_knowledge(knowledge: Sequence[Dict[str, Any]]) -> str:
    """``fft_highpass(w=1, freq_ratio=0.25) + patch_embedding(w=1)``."""
    parts = []
    for e in knowledge:
        args = [f"w={e.get('weight', 1.0):g}"] + [f"{k}={v}" for k, v in e.items() if k not in ("name", "weight")]
        parts.append(f"{e.get('name')}({', '.join(args)})")
    return " + ".join(parts)


def short_name(knowledge: KnowledgeSpec) -> str:
    """``fft+embedding``: the sources of a knowledge list in shorthand (for tables)."""
    inverse = {"fft_highpass": "fft", "patch_embedding": "embedding", "fft_lowpass": "lowpass"}
    return "+".join(inverse.get(e["name"], e["name"]) for e in normalize_knowledge(knowledge))


def active_sources(names: Sequence[str], learned: Optional[torch.Tensor], fixed: Sequence[float],
                   dtype: torch.dtype) -> List[Tuple[str, Any]]:
    """(name, w_j) of the sources that count in F = sum_j w_j F_j: every source with its
    learned weight (``learned``, a parameter, when the weights are trained), else those of a
    non-zero ``fixed`` weight (a source of weight 0 is not computed)."""
    if learned is not None:
        return [(name, learned[j].to(dtype)) for j, name in enumerate(names)]
    return [(name, w) for name, w in zip(names, fixed) if w != 0]


def build_source(entry: Dict[str, Any], dims: SourceDims) -> nn.Module:
    """The module of one normalised knowledge entry."""
    cls = KNOWLEDGE_SOURCES[entry["name"]]
    params = {k: v for k, v in entry.items() if k not in ("name", "weight")}
    return cls(dims, **params)
