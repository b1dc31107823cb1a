"""SSAST (Gong, Lai, Chung & Glass 2022, "SSAST: Self-Supervised Audio Spectrogram Transformer"): masked spectrogram
patch modelling on an AST encoder, then fine-tuning of the same encoder.

For each clip, ``mask_patches`` of the ``N = F' T'`` non-overlapping patches are masked: clusters of ``C x C``
patches (``C`` drawn once per clip from 3..5) around random starts (``s + T' i + j``, wrapping across grid rows as
the reference does; index 0 never masked) until more than ``mask_patches`` are collected, then a random subset of
exactly ``mask_patches`` (the reference keeps Python's set order). Masked patch embeddings are replaced by a learned
mask embedding before the positions. Two heads read the encoder output at the masked patches
(``Linear(d, d) -> ReLU -> Linear(d, k^2)``):

- discriminative: ``S = X C^T`` between the clip's masked target patches ``X (M, k^2)`` and predictions ``C``;
  ``-mean_j log softmax_k(S)_{jj}`` (the reference's form: each target picks its prediction among the clip's);
- generative: the mean squared error of the reconstructed patches.

The joint loss is ``L_d + 10 L_g``, from one encoder pass with one mask (the reference runs two passes with two
masks). Targets are the normalised spectrogram's patches (``unfold`` with stride = kernel). Patches are square
(``patch_size``, SSAST's patch-based model) or frames (``patch_shape: [128, 2]``: every mel bin of 2 frames, a
``1 x T'`` grid; the clusters then become runs of ``C`` neighbouring frames, as the reference's offsets
``s + T' i + j`` leave the grid for ``i >= 1``).

Shapes: ``spec (B, frames, mel_bins)`` -> ``(loss, metrics)``; ``mask_clusters`` -> ``(B, mask_patches)`` indices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ast import AST, patch_kernel, patch_strides


def mask_clusters(batch: int, grid: tuple[int, int], count: int, generator: torch.Generator | None = None,
                  cluster: tuple[int, int] = (3, 5)) -> Tensor:
    """``(batch, count)`` sorted, distinct patch indices in ``[1, N)`` per clip, grown from ``C x C`` clusters.

    Raises:
        ValueError: ``count`` above ``N - 2`` (the sampler could not finish).
    """
    rows, cols = grid
    n = rows * cols
    if not 1 <= count <= n - 2:
        raise ValueError(f"mask_patches={count} must be in 1..{n - 2} for a {rows} x {cols} patch grid")
    out = []
    for _ in range(batch):
        size = int(torch.randint(cluster[0], cluster[1] + 1, (1,), generator=generator))
        offsets = (torch.arange(size)[:, None] * cols + torch.arange(size)[None, :]).flatten()
        chosen = torch.zeros(n, dtype=torch.bool)
        while int(chosen.sum()) <= count:
            idx = int(torch.randint(0, n, (1,), generator=generator)) + offsets
            chosen[idx[(idx > 0) & (idx < n)]] = True
        pool = torch.nonzero(chosen).flatten()
        out.append(pool[torch.randperm(len(pool), generator=generator)[:count]].sort().values)
    return torch.stack(out)


def discriminative_loss(targets: Tensor, predictions: Tensor) -> tuple[Tensor, Tensor]:
    """InfoNCE over a clip's masked patches: ``targets, predictions (B, M, P)`` -> (loss, pretext accuracy)."""
    scores = targets @ predictions.transpose(1, 2)  # (B, M, M): target j against prediction k
    loss = -torch.diagonal(torch.log_softmax(scores, dim=-1), dim1=1, dim2=2).mean()
    eye = torch.arange(scores.shape[1], device=scores.device)
    accuracy = (scores.argmax(dim=1) == eye).float().mean()  # each prediction's best target is its own
    return loss, accuracy


def _head(dim: int, out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, out))


class MaskedSpectrogramModel(nn.Module):
    """An AST encoder with SSAST's mask embedding and its two prediction heads (see the module docstring).

    Args:
        encoder: an :class:`AST` with non-overlapping patches (stride = the patch size).
        mask_patches: patches masked per clip (SSAST: 400 of 512).
        generative_weight: weight of the reconstruction loss (SSAST: 10).

    Raises:
        ValueError: overlapping patches, or ``mask_patches`` the grid cannot hold.
    """

    def __init__(self, encoder: AST, mask_patches: int, generative_weight: float = 10.0):
        super().__init__()
        cfg = encoder.cfg
        self.kernel = patch_kernel(cfg)
        if patch_strides(cfg) != self.kernel:
            raise ValueError(f"masked patch modelling needs non-overlapping patches: patch_stride={cfg.patch_stride} "
                             f"must equal the patch size {list(self.kernel)} while pretraining")
        F_, T_ = encoder.grid
        if not 1 <= mask_patches <= F_ * T_ - 2:
            raise ValueError(f"mask_patches={mask_patches} must be in 1..{F_ * T_ - 2} for the {F_} x {T_} grid")
        self.encoder, self.mask_patches, self.generative_weight = encoder, mask_patches, generative_weight
        self.mask_embed = nn.Parameter(nn.init.xavier_normal_(torch.empty(1, 1, cfg.dim)))
        size = self.kernel[0] * self.kernel[1]
        self.cpred, self.gpred = _head(cfg.dim, size), _head(cfg.dim, size)
        self.generator = None

    def targets(self, spec: Tensor) -> Tensor:
        """``(B, N, k_f k_t)``: the spectrogram's patches in token order (frequency-major)."""
        return F.unfold(spec.transpose(1, 2).unsqueeze(1).float(), self.kernel, stride=self.kernel).transpose(1, 2)

    def forward(self, spec: Tensor, masked: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Joint loss and metrics for ``spec (B, frames, mel_bins)``; ``masked (B, M)`` indices or drawn here."""
        embed = self.encoder.embed
        x = embed.patches(spec)  # (B, D, F', T')
        B, D, rows, cols = x.shape
        if masked is None:
            masked = mask_clusters(B, (rows, cols), self.mask_patches, self.generator).to(x.device)
        m = torch.zeros(B, rows * cols, 1, device=x.device, dtype=x.dtype).scatter_(1, masked[..., None], 1.0)
        tokens = x.flatten(2).transpose(1, 2)
        tokens = tokens * (1 - m) + m * self.mask_embed.to(x.dtype)  # masked patches: the mask embedding
        h, grid = embed.assemble(tokens.transpose(1, 2).reshape(B, D, rows, cols))
        z = self.encoder.encode(None, inputs_embeds=h, grid=grid)[:, embed.prefix:]  # (B, N, D)
        picked = z.gather(1, masked[..., None].expand(-1, -1, D))  # (B, M, D)
        target = self.targets(spec).gather(1, masked[..., None].expand(-1, -1, self.kernel[0] * self.kernel[1]))
        loss_d, accuracy = discriminative_loss(target, self.cpred(picked).float())
        loss_g = F.mse_loss(self.gpred(picked).float(), target)
        loss = loss_d + self.generative_weight * loss_g
        return loss, {"loss": loss.detach(), "discriminative_loss": loss_d.detach(),
                      "generative_loss": loss_g.detach(), "pretext_accuracy": accuracy}


class SSAST(MaskedSpectrogramModel):
    """SSAST pretraining as a preset (``objective.name: ssast`` in ``attnlab train``): an :class:`AST` encoder of
    ``cfg`` (non-overlapping patches, no classification head) with ``round(mask_ratio * N)`` patches masked per
    clip. ``forward(spec (B, frames, mel_bins))`` -> ``(loss, metrics)``. Its encoder's tensors are named
    ``encoder.*``; ``model.init_from`` copies them into an AST of the same shape for fine-tuning.

    Raises:
        ValueError: overlapping patches (``patch_stride`` must equal the patch size), or a mask ratio that leaves
            fewer than two visible patches.
    """

    spectrogram_pretrainer = True

    def __init__(self, cfg):
        encoder = AST(cfg.model_copy(update={"num_classes": 0}))
        rows, cols = encoder.grid
        n = rows * cols
        super().__init__(encoder, max(1, min(n - 2, round(cfg.mask_ratio * n))))
        self.cfg = cfg

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
