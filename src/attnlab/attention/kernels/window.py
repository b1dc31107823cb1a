"""Swin window attention: exact softmax attention inside non-overlapping ``M x M`` windows of a 2-D grid, with a
learned relative position bias and, for shifted windows, a cyclic shift plus a mask (Liu et al. 2021, "Swin
Transformer: Hierarchical Vision Transformer using Shifted Windows").

With ``shift = s > 0`` the grid is rolled by ``(-s, -s)`` before partitioning and back after, and a key is
visible to a query only if both carry the same label of the 3 x 3 band partition of the rolled canvas (rows
``[0, R-M)``, ``[R-M, R-s)``, ``[R-s, R)``, columns likewise), so no window mixes tokens that are not neighbours
in the image. The bias of a pair is ``table[(dy + M_h - 1)(2 M_w - 1) + dx + M_w - 1, head]`` for the offset
``(dy, dx)`` = query minus key inside the window. Disallowed pairs get ``-inf`` (the references add ``-100``:
the difference is below ``e^-80`` of a weight).

On x86 CPUs with AVX-512, fp32 and bf16 calls run on attnlab's native window kernel
(:mod:`attnlab.native.window_fp32`: each (image, window, head) in cache, forward and backward); elsewhere, and
for head sizes that are not a multiple of 16, on PyTorch's batched matrix products.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from ..base import AttentionKernel
from ..capabilities import Capabilities, CapabilityError
from ...native.window_fp32 import windows_attention_fp32
from ..context import AttentionContext
from ..reference import expand_kv_heads
from ..registry import register_attention


def relative_position_index(window: tuple[int, int], device=None) -> Tensor:
    """``(M_h M_w, M_h M_w)`` long: the bias-table row of each (query, key) pair of a window, row-major tokens."""
    mh, mw = window
    ys = torch.arange(mh, device=device).repeat_interleave(mw)  # (N,) row of each token
    xs = torch.arange(mw, device=device).repeat(mh)
    dy = ys[:, None] - ys[None, :] + mh - 1  # query minus key, shifted to start at 0
    dx = xs[:, None] - xs[None, :] + mw - 1
    return dy * (2 * mw - 1) + dx


def band_labels(rows: int, cols: int, window: tuple[int, int], shift: int, device=None) -> Tensor:
    """``(rows, cols)`` long: the shifted-window region label ``3 r + c`` of each cell of the rolled canvas."""
    def bands(n: int, m: int) -> Tensor:
        i = torch.arange(n, device=device)
        return (i >= n - m).long() + (i >= n - shift).long()
    return bands(rows, window[0])[:, None] * 3 + bands(cols, window[1])[None, :]


def to_windows(x: Tensor, grid: tuple[int, int], window: tuple[int, int], shift: int) -> Tensor:
    """``(B, H, T, D)`` row-major grid tokens -> ``(B, nW, H, M_h M_w, D)`` windows of the grid rolled by ``-shift``."""
    B, H, _, D = x.shape
    (rows, cols), (mh, mw) = grid, window
    x = x.view(B, H, rows, cols, D)
    if shift:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(2, 3))
    x = x.view(B, H, rows // mh, mh, cols // mw, mw, D).permute(0, 2, 4, 1, 3, 5, 6)
    return x.reshape(B, (rows // mh) * (cols // mw), H, mh * mw, D)


def from_windows(x: Tensor, grid: tuple[int, int], window: tuple[int, int], shift: int) -> Tensor:
    """Inverse of :func:`to_windows`: ``(B, nW, H, M_h M_w, D)`` -> ``(B, H, T, D)``."""
    B, _, H, _, D = x.shape
    (rows, cols), (mh, mw) = grid, window
    x = x.view(B, rows // mh, cols // mw, H, mh, mw, D).permute(0, 3, 1, 4, 2, 5, 6).reshape(B, H, rows, cols, D)
    if shift:
        x = torch.roll(x, shifts=(shift, shift), dims=(2, 3))
    return x.reshape(B, H, rows * cols, D)


def window_order(grid: tuple[int, int], window: tuple[int, int], shift: int, device=None) -> tuple[Tensor, Tensor]:
    """``(perm, inv)``, both ``(rows * cols,)`` long: ``perm[p]`` is the row-major token at position ``p`` of the
    window order of :func:`to_windows` (window by window, row-major inside each, on the grid rolled by
    ``-shift``); ``inv`` is its inverse permutation."""
    (rows, cols), (mh, mw) = grid, window
    wr, wc, ir, ic = torch.meshgrid(*(torch.arange(n, device=device) for n in (rows // mh, cols // mw, mh, mw)),
                                    indexing="ij")
    perm = (((wr * mh + ir + shift) % rows) * cols + (wc * mw + ic + shift) % cols).reshape(-1)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=device)
    return perm, inv


def window_scores(qw: Tensor, kw: Tensor) -> Tensor:
    """``qw @ kw^T`` over the last two axes, outside autocast; bf16/fp16 inputs are multiplied in fp32 (as
    SDPA's fused kernels accumulate them), so the logits carry no low-precision rounding into the softmax."""
    if qw.dtype in (torch.float16, torch.bfloat16):
        qw, kw = qw.float(), kw.float()
    device = qw.device.type
    guard = torch.autocast(device, enabled=False) if torch.is_autocast_enabled(device) else contextlib.nullcontext()
    with guard:
        return torch.matmul(qw, kw.transpose(-1, -2))


class _Permute(torch.autograd.Function):
    """``x.index_select(dim, perm)`` whose backward gathers with the inverse permutation ``inv`` (autograd's own
    backward of ``index_select`` scatter-adds, which is many times slower on CPU for a permutation)."""

    @staticmethod
    def forward(ctx, x: Tensor, dim: int, perm: Tensor, inv: Tensor) -> Tensor:
        ctx.dim = dim
        ctx.save_for_backward(inv)
        return x.index_select(dim, perm)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (inv,) = ctx.saved_tensors
        return grad.index_select(ctx.dim, inv), None, None, None


@register_attention("window")
class WindowAttention(AttentionKernel):
    """Swin (shifted) window attention on a row-major ``(rows, cols)`` grid with a relative position bias.

    Shapes: q ``(B, H, T, Dh)``, k/v ``(B, Hkv, T, Dh)`` with ``T = rows * cols`` -> ``(B, H, T, Dh)``.

    Args:
        window_size: ``M`` (or ``(M_h, M_w)``); the grid must be a multiple of it (Swin pads the grid first).
        shift: cyclic shift ``s`` (Swin: 0 in even blocks, ``M // 2`` in odd ones); ``0 <= s < M``.
        relative_bias: learn the ``((2 M_h - 1)(2 M_w - 1), heads)`` bias table ``rel_bias`` (trunc. normal,
            std 0.02); False = plain window attention.
        scale: score scale, default ``1/sqrt(Dh)``.
        num_heads: structural (filled in by the shell).

    Raises:
        CapabilityError: no ``ctx.grid``, ``rows * cols != T`` (prefix tokens, KV cache), causal use.
        ValueError: a grid that is not a multiple of the window, a shift outside ``[0, M)``, or another head count.
    """

    capabilities = Capabilities(causal=False, key_padding_mask=False, packed=False, kv_cache=False, attn_bias=False,
                                grid_2d=True, requires_grid=True, exact=True, complexity="O(N M^2)")

    def __init__(self, window_size: int | tuple[int, int] | list[int] = 7, shift: int = 0, relative_bias: bool = True,
                 scale: float | None = None, num_heads: int = 4):
        super().__init__(scale=scale)
        self.window = (window_size, window_size) if isinstance(window_size, int) else tuple(window_size)
        if len(self.window) != 2 or min(self.window) < 1:
            raise ValueError(f"window_size must be a positive int or (rows, cols), got {window_size!r}")
        if not 0 <= shift < min(self.window):
            raise ValueError(f"shift must be in [0, {min(self.window)}) for window {self.window}, got {shift}")
        self.shift, self.num_heads = shift, num_heads
        self.rel_bias = None
        if relative_bias:
            rows = (2 * self.window[0] - 1) * (2 * self.window[1] - 1)
            self.rel_bias = nn.Parameter(nn.init.trunc_normal_(torch.empty(rows, num_heads), std=0.02))

    def _check_grid(self, ctx: AttentionContext, T: int, S: int, H: int) -> tuple[int, int]:
        rows, cols = ctx.grid
        if rows * cols != T or S != T:
            raise CapabilityError(f"window: grid {ctx.grid} has {rows * cols} cells but got {T} queries and {S} keys; "
                                  "window attention runs on a pure grid (no class/prefix token, no KV cache): use "
                                  "pooling='mean' in a ViT")
        if rows % self.window[0] or cols % self.window[1]:
            raise ValueError(f"window: grid {ctx.grid} is not a multiple of window_size {self.window}; pad the grid "
                             "(Swin pads it to the next multiple) or choose a window size dividing it")
        if self.rel_bias is not None and H != self.num_heads:
            raise ValueError(f"window was built for num_heads={self.num_heads}, got q with {H} heads")
        return rows, cols

    def window_bias(self, ctx: AttentionContext, device) -> Tensor | None:
        """``(H | 1, nW | 1, N, N)`` contiguous additive float: the relative bias plus ``-inf`` where the shift mask
        forbids (heads first: added to ``(B, H, nW, N, N)`` scores, the sum keeps their layout for the softmax)."""
        n = self.window[0] * self.window[1]
        bias = None
        if self.rel_bias is not None:
            idx = relative_position_index(self.window, device)
            bias = self.rel_bias[idx.view(-1)].view(n, n, -1).permute(2, 0, 1)[:, None]  # (H, 1, N, N)
        if self.shift:
            forbid = self._cached("mask", ctx.grid, device, self._shift_mask)  # (1, nW, N, N)
            bias = forbid if bias is None else bias + forbid.to(bias.dtype)
        return None if bias is None else bias.contiguous()

    def _shift_mask(self, grid: tuple[int, int], device) -> Tensor:
        """``(1, nW, N, N)`` float: 0 where the 3x3 band labels of the rolled canvas agree, ``-inf`` elsewhere."""
        rows, cols = grid
        n = self.window[0] * self.window[1]
        labels = band_labels(rows, cols, self.window, self.shift, device).reshape(1, 1, rows * cols, 1)
        lw = to_windows(labels, grid, self.window, 0)[0, :, 0, :, 0]  # (nW, N) labels per window
        forbid = torch.zeros(1, lw.shape[0], n, n, device=device)
        return forbid.masked_fill((lw[:, :, None] != lw[:, None, :])[None], float("-inf"))

    def _cached(self, name: str, grid: tuple[int, int], device, make):
        """``make(grid, device)``, kept for the last grid and device (every call of a stage asks for the same one)
        as one ``(key, value)`` tuple, so two threads never read a key with another's value. Made outside
        inference mode: the window order is saved for backward by every later call, training ones too."""
        key = (grid, str(device))
        cached = self.__dict__.get("_cache_" + name)
        if cached is None or cached[0] != key:
            with torch.inference_mode(False), torch.no_grad():
                cached = (key, make(grid, device))
            self.__dict__["_cache_" + name] = cached
        return cached[1]

    def attend(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        B, H, T, D = q.shape
        grid = self._check_grid(ctx, T, k.shape[2], H)
        perm, inv = self._cached("order", grid, q.device,
                                 lambda g, dev: window_order(g, self.window, self.shift, dev))
        n = self.window[0] * self.window[1]
        nw = T // n
        bias = self.window_bias(ctx, q.device)  # (H | 1, nW | 1, N, N)
        scale = self.softmax_scale(D)
        # fp32 and bf16 on AVX-512: one native pass per (image, window, head), in cache
        out = windows_attention_fp32(q, k, v, perm, n, bias, scale)
        if out is not None:
            return out
        # one gather per tensor into window order (roll and partition at once), then batched matrix products over
        # all (batch, head, window) triples with the bias broadcast over the batch: on CPU faster than PyTorch's
        # fused SDPA fed a bias copied once per image (benchmarks/vision.py, Swin-T)
        qw = _Permute.apply(q, 2, perm, inv).view(B, H, nw, n, D)
        kw, vw = (expand_kv_heads(_Permute.apply(t, 2, perm, inv), H).view(B, H, nw, n, D) for t in (k, v))
        scores = window_scores(qw, kw)  # (B, H, nW, N, N), fp32 for bf16/fp16 inputs
        scores = scores * scale if bias is None else torch.add(bias, scores, alpha=scale)
        out = torch.matmul(scores.softmax(-1).to(vw.dtype), vw).view(B, H, T, D)
        # back to the raster order, laid out (B, T, H, D) so that the shell's merge of the heads is a view
        return _Permute.apply(out.transpose(1, 2), 1, inv, perm).transpose(1, 2)

    # -- the dense pattern, for attention maps and the exactness tests -------------------------------------------
    def _dense_layout(self, ctx: AttentionContext, device) -> tuple[Tensor, Tensor]:
        """Per token of the original order: its window id and its position inside the window (rolled frame)."""
        rows, cols = ctx.grid
        r = (torch.arange(rows, device=device) - self.shift) % rows  # rolled coordinates of each original row
        c = (torch.arange(cols, device=device) - self.shift) % cols
        rr, cc = r.repeat_interleave(cols), c.repeat(rows)  # (T,)
        win = (rr // self.window[0]) * (cols // self.window[1]) + cc // self.window[1]
        inner = (rr % self.window[0]) * self.window[1] + cc % self.window[1]
        return win, inner

    def pattern_mask(self, T: int, S: int, ctx: AttentionContext, device=None) -> Tensor | None:
        if ctx.grid is None:
            return None
        win, _ = self._dense_layout(ctx, device)
        keep = win[:, None] == win[None, :]
        if self.shift:
            rows, cols = ctx.grid
            labels = band_labels(rows, cols, self.window, self.shift, device)
            r = (torch.arange(rows, device=device) - self.shift) % rows
            c = (torch.arange(cols, device=device) - self.shift) % cols
            lab = labels[r][:, c].reshape(-1)  # label of each original token's rolled cell
            keep = keep & (lab[:, None] == lab[None, :])
        return keep

    def pattern_bias(self, T: int, S: int, ctx: AttentionContext, device=None) -> Tensor | None:
        """``(1, H, T, T)`` dense relative bias (pairs in one window; 0 elsewhere, where the mask forbids)."""
        if self.rel_bias is None or ctx.grid is None:
            return None
        _, inner = self._dense_layout(ctx, device)
        idx = relative_position_index(self.window, device)[inner[:, None], inner[None, :]]  # (T, T)
        return self.rel_bias[idx].permute(2, 0, 1)[None]

    def extra_repr(self) -> str:
        return f"window={self.window}, shift={self.shift}, relative_bias={self.rel_bias is not None}"
