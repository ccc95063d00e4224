"""sam2's FPN neck with its outputs normalised to unit scale per position.

SAM2's memory attention is a pre-norm transformer: the current frame's features form its
residual stream and the memory read-out is *added* to them. With a small CNN trunk trained
from scratch, the image features grew to ~50x the scale of that read-out during
prompt-to-mask training, so the model learned to ignore its memory (zeroing the memory
cross-attention changed nothing) and never learned to track. Normalising the neck's outputs
over channels, without a learnable scale, keeps the two on the same footing.
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from sam2.modeling.backbones.image_encoder import FpnNeck

__all__ = ["NormalizedFpnNeck"]


class NormalizedFpnNeck(FpnNeck):
    """:class:`sam2.modeling.backbones.image_encoder.FpnNeck` whose feature maps are
    normalised over channels (zero mean, unit variance at each position; no affine).

    Takes the same parameters as ``FpnNeck``; returns the same ``(features, pos)`` lists,
    features ``(B, d_model, H_i, W_i)``.
    """

    def forward(self, xs: List[torch.Tensor]):
        out, pos = super().forward(xs)
        normed = []
        for x in out:
            x = x.permute(0, 2, 3, 1)
            normed.append(F.layer_norm(x, x.shape[-1:]).permute(0, 3, 1, 2).contiguous())
        return normed, pos
