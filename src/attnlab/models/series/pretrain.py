"""PatchTST's masked-patch self-supervised pretraining (Nie et al. 2023, §3.3; the official
``PatchTST_self_supervised``): random patches of every window and variate are zeroed before the embedding, and a
per-token ``Linear(d, P)`` reconstructs them; only masked patches are scored (``attnlab.objectives.forecast.
patch_mask_step``). RevIN normalises without denormalising.

[choice] The patching is the supervised model's (``patch_size``, ``patch_stride``, end padding), so every tensor but
the heads has the same name and shape in both: a forecasting run starts from a pretraining run with
``model.init_from`` (end-to-end fine-tuning). Use ``patch_stride = patch_size`` (the reference pretrains on
non-overlapping patches: with overlap, a masked patch is visible in its neighbours).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from .layers import check_inputs, patchify
from .patchtst import PatchTST


def random_patch_mask(batch: int, channels: int, patches: int, ratio: float,
                      generator: torch.Generator | None = None, device=None) -> Tensor:
    """``(batch, channels, patches)`` bool, True = masked: per (sample, channel) the ``int(patches * (1 - ratio))``
    patches with the smallest uniform noise are kept (argsort of noise, the reference).

    Raises:
        ValueError: ``ratio`` outside (0, 1).
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
    keep = int(patches * (1 - ratio))
    noise = torch.rand(batch, channels, patches, generator=generator, device=device)
    mask = torch.ones(batch, channels, patches, dtype=torch.bool, device=device)
    return mask.scatter(-1, noise.argsort(-1)[..., :keep], False)


class PatchTSTPretrain(PatchTST):
    """``inputs (B, L, C)`` -> ``(reconstruction, patches, mask)``: ``(B, C_t, N, P)``, ``(B, C_t, N, P)`` (the
    RevIN-normalised targets) and ``(B, C_t, N)`` bool (True = masked, scored).

    Raises:
        ValueError: as :class:`PatchTST`; at call, inputs of the wrong shape.
    """

    patch_pretrainer = True  # what the patch_mask objective trains (attnlab.train.build)
    forecaster = False

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        del self.head, self.head_dropout  # the forecasting head: trained after pretraining
        self.recon = nn.Linear(cfg.dim, self.patch_len)
        nn.init.normal_(self.recon.weight, std=cfg.init_std)
        nn.init.zeros_(self.recon.bias)
        self.mask_ratio = cfg.mask_ratio

    def forward(self, inputs: Tensor, mask: Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        L, T, c_t, c_x = self.shape
        check_inputs(inputs, L, c_t + c_x, "PatchTST")
        x = inputs[..., :c_t]
        if self.revin is not None:
            x = self.revin.norm(x)
        B, n = x.shape[0], self.num_tokens
        patches = patchify(x.transpose(1, 2).reshape(B * c_t, L), self.patch_len, self.stride)  # (B*C, N, P)
        if mask is None:
            mask = random_patch_mask(B, c_t, n, self.mask_ratio, generator, inputs.device)
        hidden = patches.masked_fill(mask.reshape(B * c_t, n, 1), 0.0)  # masked patches are zeros (the reference)
        pred = self.recon(self.encode(None, inputs_embeds=self.embed(hidden)))  # (B*C, N, P)
        return pred.reshape(B, c_t, n, -1), patches.reshape(B, c_t, n, -1), mask
