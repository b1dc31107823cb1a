"""Swin window attention: attnlab's native kernel (``csrc/window_fp32.c``) vs the PyTorch path it replaces.

For Swin-T's four stages at 224 px, batch 8 (windows of 7 x 7, shifted by 3 where the grid allows), times the
``window`` kernel's forward without gradients and its forward + backward (q, k, v and bias-table gradients), in fp32
and bf16, on the native kernel and on PyTorch's batched matrix products (gathers into window order, the bias add,
the softmax, the gather back), alternating the two within every repetition. Reports the paired median of the
PyTorch path's time over the native one (> 1: native faster), the native forward's rate in GFLOP/s (2 N n d
multiply-adds, i.e. 4 N n d FLOP, for N tokens, windows of n and width d) and the largest output difference
relative to the outputs' scale (bf16: the PyTorch path rounds the probabilities to bf16 before multiplying them
with V, the native kernel keeps them in fp32). The whole-model effect is in ``benchmarks/vision.py``.

    python benchmarks/window_attention.py            # 9 repetitions per cell
    python benchmarks/window_attention.py --quick    # 3
"""

from __future__ import annotations

from unittest import mock

import torch

from attnlab.attention import AttentionContext, build_attention
from attnlab.attention.kernels import window as window_kernel
from attnlab.native import load
from common import machine_info, paired, print_table, repeats_from_args, write_json

BATCH, WINDOW, HEAD_DIM = 8, 7, 32
STAGES = [("stage 1", 56, 3), ("stage 2", 28, 6), ("stage 3", 14, 12), ("stage 4", 7, 24)]  # (name, side, heads)


def _pytorch_path(fn):
    """``fn`` with the native kernel unavailable to the window kernel."""
    def run():
        with mock.patch.object(window_kernel, "windows_attention_fp32", lambda *a: None):
            return fn()
    return run


def measure(side: int, heads: int, dtype: torch.dtype, repeats: int) -> dict:
    shift = WINDOW // 2 if side > WINDOW else 0
    kernel = build_attention("window", structural=dict(num_heads=heads, num_kv_heads=heads, head_dim=HEAD_DIM,
                                                       max_seq_len=side * side), window_size=WINDOW, shift=shift)
    ctx = AttentionContext(grid=(side, side))
    g = torch.Generator().manual_seed(0)
    T = side * side
    qkv = torch.randn(BATCH, T, 3 * heads * HEAD_DIM, generator=g).to(dtype)  # as the shell's fused projection
    q, k, v = (t.unflatten(-1, (heads, HEAD_DIM)).transpose(1, 2) for t in qkv.split(heads * HEAD_DIM, -1))
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    dout = torch.randn(BATCH, heads, T, HEAD_DIM, generator=g).to(dtype)

    def forward():
        with torch.no_grad():
            return kernel(q, k, v, ctx)

    def train():
        kernel(*leaves, ctx).backward(dout)

    fwd = paired({"native": forward, "pytorch": _pytorch_path(forward)}, repeats, "pytorch", "native")
    step = paired({"native": train, "pytorch": _pytorch_path(train)}, repeats, "pytorch", "native")
    ref = _pytorch_path(forward)().float()
    err = ((forward().float() - ref).abs().max() / ref.abs().max()).item()
    gflop = 4 * BATCH * T * WINDOW * WINDOW * heads * HEAD_DIM / 1e9
    return {"forward": fwd, "train": step, "max_rel_diff": err, "native_gflops": gflop / (fwd["native_ms"] / 1e3)}


def main() -> None:
    repeats = repeats_from_args(__doc__)
    if load("attention_fp32") is None:
        raise SystemExit("the native fp32 kernels are not available here (x86-64 with AVX-512F and FMA, and gcc): "
                         "attnlab.native.native_status() says why")
    torch.set_num_threads(2)
    rows, results = [], []
    for dtype in (torch.float32, torch.bfloat16):
        for name, side, heads in STAGES:
            r = measure(side, heads, dtype, repeats)
            precision = "fp32" if dtype == torch.float32 else "bf16"
            results.append({"stage": name, "precision": precision, "grid": side, "heads": heads, **r})
            rows.append({"Swin-T": name, "precision": precision, "grid, heads": f"{side}x{side}, {heads}",
                         "forward vs PyTorch": r["forward"]["ratio"], "fwd+bwd vs PyTorch": r["train"]["ratio"],
                         "native fwd GFLOP/s": r["native_gflops"], "max rel diff": r["max_rel_diff"]})
    print_table(rows, list(rows[0]))
    path = write_json("window_attention", {"machine": machine_info(), "repeats": repeats, "batch": BATCH,
                                           "window": WINDOW, "head_dim": HEAD_DIM, "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
