"""The two native kernels of a generation step (the ``decode`` family): few-row linear layers
(``csrc/skinny.c``, :func:`linear`) and few-query attention against a cache (``csrc/decode_attention.c``,
:func:`attention`).

At a decoding step a linear layer multiplies a handful of token rows (batch x beams) by a whole weight, and
attention compares one query per head with the cached keys. PyTorch's GEMM and SDPA are tuned for large
blocks; at these sizes their fixed costs dominate (``benchmarks/seq2seq.py``: an encoder-decoder decodes
1.6-2x faster with these kernels than transformers' T5 on the same weights, both on one CPU).

:func:`linear` reads the weight from a copy packed in 16-column panels, made once per weight and kept while
the weight is unchanged (keyed by its storage and version counter): it doubles the memory of the layers it
serves, which is why only inference without gradients uses it, and why :func:`release` drops the packed
copies. Writes the key cannot see need :func:`release` too: through ``weight.data`` (a version counter of its
own) or into an inference tensor (none; keyed by storage alone). fp32 inputs use fp32 panels; bf16 inputs (or
fp32 under CPU bf16 autocast, as ``F.linear`` would cast them) use bf16 pair panels and give bf16 results. Everything else (gradients wanted, more than
:data:`MAX_ROWS` rows, CUDA, no native library) is ``F.linear``; :func:`attention` returns None where it does
not apply and the caller runs SDPA.
"""

from __future__ import annotations

import ctypes
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor

from . import load
from .marshal import check_status, threads
from .pointwise import autocast_bf16_cpu

FAMILY = "decode"
MAX_ROWS = 64  # above this, oneDNN's blocked GEMM is as fast: the call overhead is amortised
# fp32 weights smaller than this (K * N) are as fast in PyTorch (its fixed cost is lower than ours; bf16 GEMMs have
# a larger one, so bf16 takes the kernel at every size): measured at 8 rows, see the module docstring
MIN_FP32_WEIGHT = 0
# id(weight) -> (weak reference, key, panels); the reference's callback drops the entry with the weight
# (a WeakKeyDictionary would compare tensors with ==, elementwise, on a hash collision)
_packed: dict[int, tuple[weakref.ref, tuple, Tensor]] = {}


def pack(weight: Tensor, dtype: torch.dtype) -> Tensor:
    """``weight (N, K)`` -> fp32 panels ``(ceil(N/16), K, 16)`` or bf16 pair panels ``(ceil(N/16), K/2, 16, 2)``,
    zero-padded past ``N`` (the operand layouts of ``csrc/skinny.c``)."""
    N, K = weight.shape
    w = F.pad(weight.detach().to(dtype), (0, 0, 0, (-N) % 16)).view(-1, 16, K)  # (P, 16, K)
    if dtype == torch.float32:
        return w.transpose(1, 2).contiguous()
    return w.view(-1, 16, K // 2, 2).permute(0, 2, 1, 3).contiguous()


def packed(weight: Tensor, dtype: torch.dtype) -> Tensor:
    """The cached panels of ``weight`` in ``dtype``, repacked when the weight was changed in place or replaced."""
    # inference tensors (made under torch.inference_mode) keep no version counter: keyed by storage alone
    version = -1 if weight.is_inference() else weight._version
    key = (weight.data_ptr(), version, tuple(weight.shape), weight.dtype, dtype)
    entry = _packed.get(id(weight))
    if entry is None or entry[0]() is not weight or entry[1] != key:
        ident = id(weight)
        ref = weakref.ref(weight, lambda _, ident=ident: _packed.pop(ident, None))
        entry = _packed[ident] = (ref, key, pack(weight, dtype))
    return entry[2]


def release() -> None:
    """Drop every packed copy (they are rebuilt on the next decoding call)."""
    _packed.clear()


def usable(x: Tensor, weight: Tensor, bias: Tensor | None) -> torch.dtype | None:
    """The kernel's dtype for ``F.linear(x, weight, bias)`` (fp32 or bf16), or None when it does not apply:
    gradients wanted, not CPU, more than :data:`MAX_ROWS` rows, odd ``K`` in bf16, other dtypes, or no
    native library."""
    if torch.is_grad_enabled() or x.device.type != "cpu" or weight.dim() != 2 or x.dim() < 1:
        return None
    rows = x.numel() // max(1, x.shape[-1])
    if rows == 0 or rows > MAX_ROWS or x.shape[-1] != weight.shape[1] or weight.shape[1] == 0:
        return None
    floats = (torch.float32, torch.bfloat16)
    if autocast_bf16_cpu() and x.dtype in floats and weight.dtype in floats:
        dtype = torch.bfloat16
    elif x.dtype == weight.dtype and x.dtype in floats:
        dtype = x.dtype
    else:
        return None
    if dtype == torch.bfloat16 and weight.shape[1] % 2:
        return None
    if bias is not None and bias.dtype not in (torch.float32, torch.bfloat16):
        return None
    return dtype if load(FAMILY) is not None else None


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)`` for ``x (..., K)``, ``weight (N, K)`` -> ``(..., N)``; the native skinny
    kernel where :func:`usable` says so (the same values up to fp32 summation order), else ``F.linear``."""
    dtype = usable(x, weight, bias)
    if dtype is None:
        return F.linear(x, weight, bias)
    K, N = weight.shape[1], weight.shape[0]
    x2 = x.reshape(-1, K).to(dtype)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    panels = packed(weight, dtype)
    b = None if bias is None else bias.detach().to(torch.float32).contiguous()
    y = x2.new_empty(x2.shape[0], N)
    fn = load(FAMILY).attnlab_skinny_f32 if dtype == torch.float32 else load(FAMILY).attnlab_skinny_bf16
    fn(x2.data_ptr(), x2.shape[0], K, x2.stride(0), panels.data_ptr(), N, None if b is None else b.data_ptr(),
       y.data_ptr(), y.stride(0), threads((N + 31) // 32))
    return y.view(*x.shape[:-1], N)


MAX_QUERIES = 16  # per head: a decoding step (1), or a few tokens verified at once; longer goes to SDPA


def attention(q: Tensor, k: Tensor, v: Tensor, keep: Tensor | None = None, bias: Tensor | None = None,
              scale: float | None = None) -> Tensor | None:
    """Softmax attention of a few queries against a decoding cache on the native kernel, or None where it does
    not apply (gradients wanted, not CPU, more than :data:`MAX_QUERIES` queries, mixed or other dtypes, head size
    not a multiple of 16 or above 256, no native library).

    Shapes: q ``(B, H, T, Dh)``, k/v ``(B, Hkv, S, Dh)`` (``H`` a multiple of ``Hkv``; any strides with a unit
    last one, e.g. the filled part of a cache buffer) -> ``(B, H, T, Dh)`` in q's dtype. ``keep`` (bool, True =
    attend) and ``bias`` (additive) broadcast to ``(B, H, T, S)``; a query with no key kept gives zeros. Queries
    and keys of different dtypes are declined (attnlab's caches store keys in the dtype they arrive in, so under
    autocast both are bf16).
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or q.device.type != "cpu":
        return None
    B, H, T, dh = q.shape
    S = k.shape[2]
    if (T > MAX_QUERIES or S < 1 or q.dtype not in (torch.float32, torch.bfloat16) or not q.dtype == k.dtype == v.dtype
            or dh % 16 or dh > 256 or k.shape[3] != dh or v.shape[3] != dh or v.shape[2] != S
            or k.shape[0] != B or v.shape[0] != B or k.shape[1] != v.shape[1] or H % k.shape[1]
            or any(t.stride(-1) != 1 for t in (q, k, v))):
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return None
    lib = load(FAMILY)
    if lib is None:
        return None
    mask = _additive_mask(keep, bias, (B, H, T, S))
    out = torch.empty(B, H, T, dh, dtype=q.dtype, device=q.device)
    # (batch, head, token) strides of q, k, v, out and the mask, in one array (the C side reads 5 x 3)
    strides = (ctypes.c_int64 * 15)(*[s for t in (q, k, v, out) for s in t.stride()[:3]],
                                     *([0, 0, 0] if mask is None else mask.stride()[:3]))
    base = ctypes.addressof(strides)
    fn = lib.attnlab_decode_attention_f32 if q.dtype == torch.float32 else lib.attnlab_decode_attention_bf16
    status = fn(q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), base, base + 24, base + 48, base + 72,
                None if mask is None else mask.data_ptr(), base + 96, B, H, k.shape[1], T, S, dh,
                dh ** -0.5 if scale is None else float(scale), threads(B * H * T))
    check_status(status, "the native decoding attention", "its score buffer")
    return out


def _additive_mask(keep: Tensor | None, bias: Tensor | None, shape: tuple[int, int, int, int]) -> Tensor | None:
    """``keep`` (bool) and ``bias`` as one fp32 additive mask (``-inf`` = masked) broadcast to ``shape``
    (zero strides where they broadcast, unit stride along the keys), or None for neither."""
    if keep is None and bias is None:
        return None
    if bias is None:
        mask = torch.zeros(keep.shape, dtype=torch.float32, device=keep.device).masked_fill_(~keep, float("-inf"))
    else:
        mask = bias.to(torch.float32)
        if keep is not None:
            mask = mask.masked_fill(~keep, float("-inf"))
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    mask = mask.expand(shape)
    return mask if mask.stride(-1) == 1 else mask.contiguous()
