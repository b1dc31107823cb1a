"""PatchTST training-step speed: attnlab's ``patchtst-small`` against Nixtla neuralforecast's PatchTST at the same shape.

Both models: look-back 96, horizon 24, one channel per series (channel independence), RevIN, patches of 16 with
stride 8 (12 patches), width 64, 2 layers, 4 heads, feed-forward 128, dropout 0.2, flatten head. One training step =
forward, MSE, backward and an AdamW update on a batch of ``--batch`` windows (neuralforecast's ``windows_batch_size``
plays this role), fp32, 2 threads; the two alternate within each repetition and ``paired`` is the median of
neuralforecast's time over attnlab's. Lightning's loop around neuralforecast's module is not timed: the module's
step alone, which is what its trainer runs per batch.

neuralforecast is a benchmark peer, not a dependency: ``pip install --no-deps neuralforecast pytorch-lightning
lightning-utilities torchmetrics coreforecast utilsforecast`` (its package ``__init__`` imports the ray/optuna tuners;
the PatchTST module is loaded without it).

    python benchmarks/forecast_speed.py                # 7 repetitions of 20 steps
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import statistics
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, print_table, write_json  # noqa: E402

L, H = 96, 24


def neuralforecast_patchtst():
    """neuralforecast's PatchTST class, imported without the package ``__init__`` (which needs ray and optuna)."""
    spec = importlib.util.find_spec("neuralforecast")
    if spec is None:
        raise SystemExit("neuralforecast is not installed: pip install --no-deps neuralforecast pytorch-lightning "
                         "lightning-utilities torchmetrics coreforecast utilsforecast")
    pkg = types.ModuleType("neuralforecast")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules.setdefault("neuralforecast", pkg)
    return importlib.import_module("neuralforecast.models.patchtst").PatchTST


def models():
    from attnlab.models import create_model

    ours = create_model("patchtst-small", lookback=L, horizon=H, num_variates=1, num_exogenous=0)
    nf = neuralforecast_patchtst()(h=H, input_size=L, encoder_layers=2, n_heads=4, hidden_size=64,
                                   linear_hidden_size=128, dropout=0.2, fc_dropout=0.2, patch_len=16, stride=8,
                                   revin=True, max_steps=1)
    return ours.train(), nf.train()


def stepper(model, call):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(x, y):
        loss = torch.nn.functional.mse_loss(call(model, x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours, nf = models()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(args.batch, L, 1, generator=g), torch.randn(args.batch, H, 1, generator=g)
    steps = {"attnlab": stepper(ours, lambda m, x: m(x)),
             "neuralforecast": stepper(nf, lambda m, x: m({"insample_y": x}))}
    for fn in steps.values():
        fn(x, y)
    times = {k: [] for k in steps}
    for _ in range(args.repeats):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                fn(x, y)
            times[name].append((time.perf_counter() - t0) / args.steps)
    params = {"attnlab": sum(p.numel() for p in ours.parameters()), "neuralforecast": sum(p.numel() for p in nf.parameters())}
    rows = [{"library": k, "parameters": params[k], "ms per step": 1e3 * statistics.median(v),
             "windows/s": args.batch / statistics.median(v)} for k, v in times.items()]
    paired = statistics.median(n / a for a, n in zip(times["attnlab"], times["neuralforecast"]))
    table = print_table(rows, ["library", "parameters", "ms per step", "windows/s"])
    print(f"paired: attnlab {paired:.2f}x neuralforecast")
    path = write_json("forecast_speed", {"machine": machine_info(), "batch": args.batch, "lookback": L, "horizon": H,
                                         "rows": rows, "paired": paired, "table": table,
                                         "times_s": {k: [round(t, 5) for t in v] for k, v in times.items()}})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
