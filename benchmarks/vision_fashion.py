"""Every vision architecture's CPU-sized Fashion-MNIST preset at one budget: test accuracy and training time.

Each preset trains through `attnlab train configs/vision-fashion.yaml` with only `model.name` changed (same steps,
batch 128, random 2-pixel shifts and flips, AdamW, warm-up and cosine decay, fp32), one after another in this
process, then `attnlab eval` scores the 10,000 test images. Budgets are equal in images seen, not in seconds: the
table gives each one's training time, so accuracy per minute can be read off.

    python benchmarks/vision_fashion.py --steps 800           # ~50 min on 2 cores for all presets
    python benchmarks/vision_fashion.py --steps 800 --models cvt-fashion vit-fashion   # replaces those rows
    python benchmarks/vision_fashion.py --quick               # 20 steps each: checks the pipeline
    python benchmarks/vision_fashion.py --speed               # forward images/s of every preset, no training

The README's 800-step table was measured with the earlier recipe (no erasing, lr 2e-3, decay to lr / 10); its
conditions are ``--set 'data.options={crop_padding: 2, flip: true}' train.lr=2e-3 train.min_lr_ratio=0.1``.

A name ``preset:module`` trains a VAN-style preset with another grid attention module (``van-fashion:psa``).
``--speed`` builds each preset (random weights) and times eval-mode forward passes of 256 images, the presets
alternating within each repetition (median of the repetitions, ratio to vit-fashion).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from attnlab.config import load_config
from attnlab.core.io import write_json
from attnlab.train import evaluate_run, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine_info  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ["vit-fashion", "swin-fashion", "convit-fashion", "cvt-fashion", "dinat-fashion", "t2t-vit-fashion", "tnt-fashion",
           "sret-fashion-deep", "sret-fashion-wide", "uniformer-fashion", "van-fashion", "van-fashion:psa",
           "van-fashion:ulsam", "van-fashion:atconv"]


def split_name(name: str) -> tuple[str, dict]:
    """``preset`` or ``preset:module`` -> the preset and its model overrides."""
    preset, _, module = name.partition(":")
    return preset, {"grid_attention": module} if module else {}


def build(name: str):
    from attnlab.models import create_model

    preset, overrides = split_name(name)
    return create_model(preset, **overrides)


def forward_speed(names: list[str], reps: int = 5, batch: int = 256) -> dict[str, float]:
    """Images/s of eval-mode forward passes, the presets alternating within each repetition (median)."""
    models = {name: build(name).eval() for name in names}
    x = torch.randn(batch, 1, 28, 28)
    times = {name: [] for name in names}
    with torch.no_grad():
        for m in models.values():
            m.classify(x)  # warm-up
        for _ in range(reps):
            for name, m in models.items():
                t0 = time.perf_counter()
                m.classify(x)
                times[name].append(time.perf_counter() - t0)
    return {name: batch / statistics.median(t) for name, t in times.items()}


def run_one(name: str, steps: int, out: Path, extra_overrides: list[str] | None = None) -> dict:
    """Train ``name`` for ``steps`` with the Fashion-MNIST recipe (and ``extra_overrides``), then score the test
    split."""
    preset, extra = split_name(name)
    overrides = [f"model.name={preset}", *(f"model.{k}={v}" for k, v in extra.items()), f"train.steps={steps}", f"train.run_dir={out / name.replace(':', '-')}",
                 "train.precision=fp32",
                 f"train.eval_every={steps}", f"train.checkpoint_every={steps}", f"train.warmup_steps={min(200, steps // 5)}",
                 *(extra_overrides or [])]
    cfg = load_config(ROOT / "configs" / "vision-fashion.yaml", overrides)
    result = train(cfg, overwrite=True, progress=False)
    scores = evaluate_run(out / name.replace(":", "-"), progress=False)
    return {"model": name, "parameters": result.num_parameters, "steps": steps,
            "train_seconds": round(result.train_seconds, 1), "test_accuracy": scores["accuracy"],
            "test_top5": scores["top5_accuracy"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1000, help="training steps per preset (batch 128)")
    ap.add_argument("--quick", action="store_true", help="20 steps per preset")
    ap.add_argument("--models", nargs="+", default=PRESETS, help="presets to train (default: all)")
    ap.add_argument("--out", default="runs/bench-vision-fashion", help="run folders")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="recipe overrides for every preset (e.g. train.lr=2e-3)")
    ap.add_argument("--speed", action="store_true", help="only forward images/s of every preset (no training)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.speed:
        speed = forward_speed(args.models)
        print("| preset | parameters | forward images/s | vs vit-fashion |\n|---|---|---|---|")
        for name, ips in sorted(speed.items(), key=lambda kv: -kv[1]):
            print(f"| {name} | {sum(p.numel() for p in build(name).parameters()) / 1e6:.2f}M | {ips:,.0f} | "
                  f"{ips / speed.get('vit-fashion', ips):.2f}x |")
        write_json(RESULTS / "vision_fashion_speed.json", {"machine": machine_info(), "batch": 256,
                                                          "images_per_second": speed})
        return
    steps = 20 if args.quick else args.steps
    rows = []
    for name in args.models:
        rows.append(run_one(name, steps, Path(args.out), args.set))
        r = rows[-1]
        print(f"{name:20s} {r['test_accuracy']:.4f} accuracy, {r['train_seconds']:7.1f} s", flush=True)
    print(f"\n| preset | parameters | test accuracy | top-5 | training time ({steps} steps of 128) |\n|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: -r["test_accuracy"]):
        print(f"| {r['model']} | {r['parameters'] / 1e6:.2f}M | {r['test_accuracy']:.4f} | {r['test_top5']:.4f} | "
              f"{r['train_seconds'] / 60:.1f} min |")
    if not args.quick:  # rows of presets trained again replace their old rows; the others stay
        path = RESULTS / "vision_fashion.json"
        old = json.loads(path.read_text()) if path.is_file() else {}
        kept = [r for r in old.get("rows", []) if old.get("steps") == steps and r["model"] not in args.models]
        write_json(path, {"machine": machine_info(), "steps": steps, "batch_size": 128, "rows": kept + rows})


if __name__ == "__main__":
    main()
