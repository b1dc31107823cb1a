"""fp32 linear layers: attnlab's ``linear`` (oneDNN's GEMM on AVX-512 CPUs) vs ``F.linear`` (MKL's sgemm).

For each layer shape of ViT-B/16 and Swin-T at 224 px, batch 8 (rows x in -> out), times the forward without
gradients and the forward + backward (input, weight and bias gradients) of both, alternating the two within every
repetition, and reports the paired median of ``F.linear``'s time over attnlab's (> 1: attnlab faster) and the
largest difference of outputs relative to their scale. The whole-model effect is in ``benchmarks/vision.py``.

    python benchmarks/linear_fp32.py            # 9 repetitions per shape
    python benchmarks/linear_fp32.py --quick    # 3
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from attnlab.native.linear import linear, onednn_fp32
from common import machine_info, paired, print_table, repeats_from_args, write_json

# (model, layer, rows, in, out)
SHAPES = [("vit-b16", "qkv", 1576, 768, 2304), ("vit-b16", "out_proj", 1576, 768, 768),
          ("vit-b16", "fc_in", 1576, 768, 3072), ("vit-b16", "fc_out", 1576, 3072, 768),
          ("swin-t stage 1", "qkv", 25088, 96, 288), ("swin-t stage 1", "fc_out", 25088, 384, 96),
          ("swin-t stage 2", "qkv", 6272, 192, 576), ("swin-t stage 3", "fc_in", 1568, 384, 1536),
          ("swin-t stage 4", "fc_out", 392, 3072, 768)]


def _paired(fns: dict, repeats: int) -> dict:
    """Median milliseconds of attnlab and ``F.linear`` and the paired median ratio ``F.linear / attnlab``."""
    r = paired(fns, repeats, baseline="F.linear", candidate="attnlab")
    return {"attnlab_ms": r["attnlab_ms"], "torch_ms": r["F.linear_ms"], "ratio": r["ratio"]}


def measure(rows: int, k: int, n: int, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, k, generator=g)
    w = (torch.randn(n, k, generator=g) * k ** -0.5).requires_grad_()
    b = torch.randn(n, generator=g).requires_grad_()
    dy = torch.randn(rows, n, generator=g)
    xg = x.clone().requires_grad_()

    def train(fn):
        return lambda: fn(xg, w, b).backward(dy)

    with torch.no_grad():
        fwd = _paired({"attnlab": lambda: linear(x, w, b), "F.linear": lambda: F.linear(x, w, b)}, repeats)
        ref = F.linear(x, w, b)
        err = ((linear(x, w, b) - ref).abs().max() / ref.abs().max()).item()
    step = _paired({"attnlab": train(linear), "F.linear": train(F.linear)}, repeats)
    return {"forward": fwd, "train": step, "max_rel_diff": err, "onednn": onednn_fp32(x, w, b)}


def main() -> None:
    repeats = repeats_from_args(__doc__)
    torch.set_num_threads(2)
    rows, results = [], []
    for model, layer, m, k, n in SHAPES:
        r = measure(m, k, n, repeats)
        results.append({"model": model, "layer": layer, "rows": m, "in": k, "out": n, **r})
        rows.append({"model": model, "layer": layer, "rows x in -> out": f"{m} x {k} -> {n}",
                     "oneDNN": r["onednn"], "forward vs F.linear": r["forward"]["ratio"],
                     "fwd+bwd vs F.linear": r["train"]["ratio"], "max rel diff": r["max_rel_diff"]})
    print_table(rows, list(rows[0]))
    path = write_json("linear_fp32", {"machine": machine_info(), "repeats": repeats, "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
