"""Several classes from SAM's mask decoder: one mask token per class.

SAM's decoder already predicts several masks: 4 mask tokens, each turned into a mask by its
own hypernetwork MLP against the shared upscaled image features. A model of ``num_classes``
C uses the first C tokens' masks as C class logits (C = 1 is SAM's single-mask output,
today's model bit for bit); the background is class 0. This keeps every weight SAM learnt
(the two-way transformer attends to all tokens jointly, so the classes compete for image
regions as SAM's multimask outputs do) and adds no new layer. The alternative, a C-channel
head on the decoder's mask features, would start from random weights and ignore the tokens'
learnt roles.

Where C > 4 the checkpoint has too few tokens: the missing ones (their embedding, their
hypernetwork MLP and their row of the frozen IoU head) start as copies of token ``i % 4``.
Copies give the same mask at first and diverge as soon as their classes' gradients differ;
they are part of the trained decoder, saved in every adapter file.
"""

from __future__ import annotations

import re
from typing import Dict, Tuple

import torch

TOKENS = "mask_decoder.mask_tokens.weight"
_MLP = re.compile(r"^mask_decoder\.output_hypernetworks_mlps\.(\d+)\.(.+)$")
_IOU_HEAD = "mask_decoder.iou_prediction_head."


def extend_mask_tokens(sd: Dict[str, torch.Tensor], shapes: Dict[str, Tuple[int, ...]]
                       ) -> Tuple[Dict[str, torch.Tensor], int]:
    """(``sd`` with its mask tokens extended to the model's count, how many were added): the
    token embeddings, hypernetwork MLPs and IoU-head rows of the added tokens are copies of
    token ``i % n`` (n: the file's tokens). A file with as many tokens is returned as it is."""
    have, want = sd.get(TOKENS), shapes.get(TOKENS)
    if have is None or want is None or want[0] <= have.shape[0] or tuple(want[1:]) != tuple(have.shape[1:]):
        return sd, 0
    n, total = have.shape[0], want[0]
    source = [i % n for i in range(n, total)]
    out = dict(sd)
    out[TOKENS] = torch.cat([have, have[source]])
    for key, t in sd.items():
        m = _MLP.match(key)
        if m and int(m.group(1)) < n:
            for i in range(n, total):
                if i % n == int(m.group(1)):
                    out[f"mask_decoder.output_hypernetworks_mlps.{i}.{m.group(2)}"] = t.clone()
        elif key.startswith(_IOU_HEAD) and key in shapes and t.shape[0] == n and shapes[key][0] == total:
            out[key] = torch.cat([t, t[source]])
    return out, total - n
