"""Swin window attention: attnlab's native kernel (``csrc/window_fp32.c``) vs the PyTorch path it replaces.

For Swin-T's four stages at 224 px, batch 8 (windows of 7 x 7, shifted by 3 where the grid allows), times the
``window`` kernel's forward without gradients and its forward + backward (q, k, v and bias-table gradients), in fp32
and bf16, on the native kernel and on PyTorch's batched matrix products (gathers into window order, the bias add,
the softmax, the gather back), alternating the two within every repetition. Reports the paired median of the
PyTorch path's time over the native one (> 1: native faster), the native forward's rate in GFLOP/s (2 N n d
multiply-adds, i.e. 4 N n d FLOP, for N tokens, windows of n and width d) and the largest output difference
relative to the outputs' scale (bf16: the PyTorch path rounds the probabilities to bf16 before multiplying them
with V, the native kernel keeps them in fp32). The whole-model effect is in ``benchmarks/vision.py``.

The same kernel trains bf16 bidirectional attention over whole rows where the bf16 training kernel needs AMX and
the CPU has none (one window of every token: a ViT's attention); a second table times that route
(``attnlab.native.attention.documents_attention``) against PyTorch's ``scaled_dot_product_attention`` at ViT-B/16's
shape (197 tokens, 12 heads of 64, batch 8), forward + backward.

    python benchmarks/window_attention.py            # 9 repetitions per cell
    python benchmarks/window_attention.py --quick    # 3
"""

from __future__ import annotations

from unittest import mock

import torch
import torch.nn.functional as F

from attnlab.attention import AttentionContext, build_attention
from attnlab.attention.kernels import window as window_kernel
from attnlab.native import attention as native_attention
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


def measure_whole_rows(tokens: int, repeats: int) -> dict | None:
    """bf16 forward + backward of ViT-B/16's attention on the native route vs SDPA; None where the native route
    does not take it (a CPU with AMX trains bf16 on its own kernel)."""
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(BATCH, tokens, 3, 12, 64, generator=g).bfloat16()
    leaves = [qkv[:, :, i].transpose(1, 2).detach().requires_grad_() for i in range(3)]  # (B, H, T, Dh) views
    dout = torch.randn(BATCH, 12, tokens, 64, generator=g).bfloat16()
    calls = []
    real = native_attention.windows_attention_fp32
    with mock.patch.object(native_attention, "windows_attention_fp32", lambda *a: calls.append(1) or real(*a)):
        out = native_attention.documents_attention(*leaves, None, causal=False, scale=None)
    if out is None or not calls:
        return None
    ref = F.scaled_dot_product_attention(*leaves).float()
    err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
    attend = native_attention.documents_attention
    fns = {"native": lambda: attend(*leaves, None, causal=False, scale=None).backward(dout),
           "pytorch": lambda: F.scaled_dot_product_attention(*leaves).backward(dout)}
    return {"train": paired(fns, repeats, "pytorch", "native"), "max_rel_diff": err}


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
    whole = measure_whole_rows(197, repeats)
    if whole is None:
        print("ViT-B/16 bf16 training: this CPU trains bf16 attention on its AMX kernel, not the window kernel")
    else:
        row = {"ViT-B/16 attention, bf16": "197 tokens, 12 heads of 64", "fwd+bwd vs SDPA": whole["train"]["ratio"],
               "max rel diff": whole["max_rel_diff"]}
        print_table([row], list(row))
    path = write_json("window_attention", {"machine": machine_info(), "repeats": repeats, "batch": BATCH,
                                           "window": WINDOW, "head_dim": HEAD_DIM, "results": results,
                                           "vit_b16_bf16_whole_rows": whole})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
