"""Masked autoencoder pretraining for the ViT family (He et al. 2022, "Masked Autoencoders Are Scalable Vision
Learners", arXiv:2111.06377).

Each image's patches are shuffled by a seeded random permutation; the encoder (a :class:`ViT`) sees only the
first ``(1 - mask_ratio) * N`` of them (plus [CLS]), so it never reads a masked pixel. A light decoder (its
own narrower Transformer on the shared body) gets the encoded visible tokens back in place, a learned mask
token everywhere else and its own position embeddings, and predicts every patch's pixels. The loss is the
mean squared error on the masked patches only, against per-patch normalised pixels by default
(``norm_pix_loss``, the paper's better variant).

Shapes: ``pixels (B, C, H, W)``; patches ``(B, N, p * p * C)`` in row-major grid order, channels last within
a patch; ``mask (B, N)`` bool, True = masked.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..transformer import TransformerBody, init_weights
from .vit import ViT


def patchify(pixels: Tensor, patch_size: int) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, N, p * p * C)`` patches in row-major order."""
    B, C, H, W = pixels.shape
    p = patch_size
    x = pixels.reshape(B, C, H // p, p, W // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(patches: Tensor, patch_size: int, channels: int, side: int) -> Tensor:
    """Inverse of :func:`patchify` for square images of ``side x side`` patches."""
    B, p = patches.shape[0], patch_size
    x = patches.reshape(B, side, side, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(B, channels, side * p, side * p)


class _Decoder(TransformerBody):
    causal = False


class MaskedAutoencoder(nn.Module):
    """ViT encoder on the visible patches + light decoder predicting the masked ones.

    Args:
        cfg: the encoder's :class:`ModelConfig` (a ViT preset's; ``pooling`` "cls" keeps [CLS] visible).
        mask_ratio: share of patches masked per image, in (0, 1).
        decoder_dim, decoder_layers, decoder_heads: the decoder's width (default ``dim // 2``), depth (2) and
            heads (default the encoder's). Its attention is the encoder's first kernel; it always sees the
            full patch grid.
        norm_pix_loss: regress per-patch normalised pixels (mean 0, variance 1 per patch).

    Raises:
        ValueError: ``mask_ratio`` outside (0, 1) or one that leaves no visible patch; a config of another vision
            family (stages, a tokens-to-token stem, ConViT's local layers).
        CapabilityError: a grid kernel in the encoder (the visible patches lie on no grid).
    """

    def __init__(self, cfg: ModelConfig, mask_ratio: float = 0.75, decoder_dim: int | None = None,
                 decoder_layers: int = 2, decoder_heads: int | None = None, norm_pix_loss: bool = True):
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        other = [f"{k}={getattr(cfg, k)}" for k in ("depths", "stage_dims", "stage_embed", "local_layers")
                 if getattr(cfg, k)]
        if other:  # a Swin, CvT, T2T-ViT, ConViT ... config would silently become a plain ViT here
            raise ValueError(f"MaskedAutoencoder wraps a plain ViT config (model_config('vit-tiny'), ...); this one "
                             f"has {', '.join(other)} of another vision family")
        self.encoder = ViT(cfg)
        rows, cols = self.encoder.grid
        self.num_patches, self.patch_size, self.channels = rows * cols, cfg.patch_size, cfg.num_channels
        self.num_visible = int(self.num_patches * (1 - mask_ratio))
        if self.num_visible < 1:
            raise ValueError(f"mask_ratio={mask_ratio} masks all {self.num_patches} patches; lower it")
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        self._check_encoder_kernels()
        dim = decoder_dim or max(cfg.dim // 2, 8)
        heads = decoder_heads or cfg.num_heads
        name, opts = cfg.layer_attention(0)
        dec_cfg = cfg.model_copy(update=dict(dim=dim, num_layers=decoder_layers, num_heads=heads, num_kv_heads=None,
                                             head_dim=None, mlp_dim=None, attention=name, attention_options=opts,
                                             position="none", max_seq_len=self.num_patches))
        self.decoder = _Decoder(dec_cfg, embed=nn.Identity())
        self.decoder_in = nn.Linear(cfg.dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.decoder_pos = nn.Parameter(torch.randn(1, self.num_patches, dim) * cfg.init_std)
        self.decoder_out = nn.Linear(dim, cfg.patch_size ** 2 * cfg.num_channels)
        init_weights(self.decoder, dec_cfg)
        nn.init.normal_(self.mask_token, std=cfg.init_std)

    def _check_encoder_kernels(self) -> None:
        """The encoder sees a random subset of the patches, which has no grid: a kernel that places tokens on the
        grid would run over them as a 1-D sequence (or not at all), so it is refused here.

        Raises:
            CapabilityError: naming the kernel and the kernels that serve the visible tokens.
        """
        from ...attention.capabilities import CapabilityError
        from ...attention.context import AttentionContext
        from ...attention.registry import get_attention_class
        from ..probe import kernels_serving

        grid = sorted({b.attn.kernel.name for b in self.encoder.blocks if b.attn.kernel.capabilities.grid_2d})
        if grid:
            tokens = self.num_visible + (1 if self.encoder.cfg.pooling == "cls" else 0)
            fit = [n for n in kernels_serving(tokens, tokens, AttentionContext(causal=False))
                   if not get_attention_class(n).capabilities.grid_2d]
            raise CapabilityError(f"MAE's encoder sees {self.num_visible} randomly chosen patches, which lie on no "
                                  f"grid, so attention {grid} cannot place them; kernels that can: {fit}")

    def random_masking(self, batch: int, device=None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(ids_keep (B, n_visible), mask (B, N))``: a uniform random subset of exactly ``n_visible`` patches."""
        noise = torch.rand(batch, self.num_patches, generator=generator, device=device)
        order = noise.argsort(dim=1)
        ids_keep = order[:, : self.num_visible].sort(dim=1).values  # visible patches in grid order
        mask = torch.ones(batch, self.num_patches, dtype=torch.bool, device=device)
        mask.scatter_(1, ids_keep, False)
        return ids_keep, mask

    def encode_visible(self, pixels: Tensor, ids_keep: Tensor) -> Tensor:
        """The encoder on the visible patches only: ``(B, prefix + n_visible, dim)`` ([CLS] first if any)."""
        tokens = self.encoder.embed(pixels)  # (B, prefix + N, D), positions added
        prefix = tokens.shape[1] - self.num_patches
        patches = tokens[:, prefix:].gather(1, ids_keep[..., None].expand(-1, -1, tokens.shape[-1]))
        return self.encoder.encode(None, inputs_embeds=torch.cat([tokens[:, :prefix], patches], dim=1))

    def forward(self, pixels: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``pixels (B, C, H, W)`` -> ``(loss, predicted patches (B, N, p*p*C), mask (B, N))``."""
        B = pixels.shape[0]
        ids_keep, mask = self.random_masking(B, pixels.device, generator)
        latent = self.encode_visible(pixels, ids_keep)
        prefix = latent.shape[1] - self.num_visible
        visible = self.decoder_in(latent[:, prefix:])  # (B, n_visible, d)
        x = self.mask_token.expand(B, self.num_patches, -1).clone()
        x = x.scatter(1, ids_keep[..., None].expand(-1, -1, x.shape[-1]), visible) + self.decoder_pos
        side = int(self.num_patches ** 0.5)
        pred = self.decoder_out(self.decoder.encode(None, inputs_embeds=x, grid=(side, side)))  # (B, N, p*p*C)
        target = self.targets(pixels)
        per_patch = (pred.float() - target).pow(2).mean(dim=-1)  # (B, N)
        loss = (per_patch * mask).sum() / mask.sum()
        return loss, pred, mask

    def targets(self, pixels: Tensor) -> Tensor:
        """The regression targets: patches, normalised per patch with ``norm_pix_loss``."""
        target = patchify(pixels.float(), self.patch_size)
        if self.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        return target

    @torch.no_grad()
    def reconstruct(self, pixels: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(masked input, reconstruction)`` images ``(B, C, H, W)``: visible patches as given, masked ones
        predicted (de-normalised with each patch's own statistics when ``norm_pix_loss``, as in the paper's demo)."""
        _, pred, mask = self(pixels, generator)
        patches = patchify(pixels.float(), self.patch_size)
        if self.norm_pix_loss:
            mean, var = patches.mean(dim=-1, keepdim=True), patches.var(dim=-1, keepdim=True)
            pred = pred.float() * (var + 1e-6).sqrt() + mean
        side = int(self.num_patches ** 0.5)
        shown = unpatchify(patches.masked_fill(mask[..., None], 0.0), self.patch_size, self.channels, side)
        filled = unpatchify(torch.where(mask[..., None], pred.float(), patches), self.patch_size, self.channels, side)
        return shown, filled
