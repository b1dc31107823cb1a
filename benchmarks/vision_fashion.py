"""Every vision architecture's CPU-sized Fashion-MNIST preset at one budget: test accuracy and training time.

Each preset trains through `attnlab train configs/vision-fashion.yaml` with only `model.name` changed (same steps,
batch 128, random 2-pixel shifts and flips, AdamW, warm-up and cosine decay, fp32), one after another in this
process, then `attnlab eval` scores the 10,000 test images. Budgets are equal in images seen, not in seconds: the
table gives each one's training time, so accuracy per minute can be read off.

    python benchmarks/vision_fashion.py --steps 800           # ~50 min on 2 cores for all presets
    python benchmarks/vision_fashion.py --steps 800 --models cvt-fashion vit-fashion   # replaces those rows
    python benchmarks/vision_fashion.py --quick               # 20 steps each: checks the pipeline
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from attnlab.config import load_config
from attnlab.core.io import write_json
from attnlab.train import evaluate_run, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine_info  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ["vit-fashion", "swin-fashion", "convit-fashion", "cvt-fashion", "dinat-fashion", "t2t-vit-fashion", "tnt-fashion",
           "sret-fashion-deep", "sret-fashion-wide"]


def run_one(name: str, steps: int, out: Path) -> dict:
    """Train ``name`` for ``steps`` with the Fashion-MNIST recipe, then score the test split."""
    overrides = [f"model.name={name}", f"train.steps={steps}", f"train.run_dir={out / name}", "train.precision=fp32",
                 f"train.eval_every={steps}", f"train.checkpoint_every={steps}", f"train.warmup_steps={min(200, steps // 5)}"]
    cfg = load_config(ROOT / "configs" / "vision-fashion.yaml", overrides)
    result = train(cfg, overwrite=True, progress=False)
    scores = evaluate_run(out / name, progress=False)
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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = 20 if args.quick else args.steps
    rows = []
    for name in args.models:
        rows.append(run_one(name, steps, Path(args.out)))
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
