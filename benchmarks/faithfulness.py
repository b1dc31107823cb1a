"""Which explanation to trust: deletion and insertion areas on Fashion-MNIST for attention rollout, gradient rollout,
the raw last-layer attention and a random ranking (Petsiuk et al. 2018's curves; `attnlab.viz.faithfulness`).

A ViT is trained with the Fashion-MNIST recipe (`configs/vision-fashion.yaml`, `model.name` set, or `--run` an
existing image run), then for the first `--images` test images each method ranks the patches; patches are replaced
by black (deletion, most relevant first) or restored from black (insertion), one patch per stage, and the
probability of the model's original prediction is followed. Lower deletion area and higher insertion area = a more
faithful ranking; every method should beat random.

    python benchmarks/faithfulness.py                    # trains vit-fashion 800 steps (~5 min), 500 images
    python benchmarks/faithfulness.py --run runs/vision-fashion --images 1000
    python benchmarks/faithfulness.py --quick            # 30 steps, 64 images: checks the pipeline
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import Tensor

from attnlab.config import load_config
from attnlab.train import train
from attnlab.explain.maps import maps_with_gradients, read_relevance, trailing_run
from attnlab.explain.runs import content_grid, image_classifier
from attnlab.viz.attention import fuse_heads, grad_rollout, rollout
from attnlab.viz.faithfulness import area_under_curve, perturbation_curve

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, print_table, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("rollout", "grad_rollout", "raw_last_layer", "random")


def train_model(name: str, steps: int, out: Path) -> Path:
    overrides = [f"model.name={name}", f"train.steps={steps}", f"train.run_dir={out}", "train.precision=fp32",
                 f"train.eval_every={steps}", f"train.checkpoint_every={steps}",
                 f"train.warmup_steps={min(200, steps // 5)}"]
    train(load_config(ROOT / "configs" / "vision-fashion.yaml", overrides), overwrite=True, progress=False)
    return out


def relevances(model, x: Tensor, target: Tensor, content: int, seed: int) -> dict[str, torch.Tensor]:
    """Every method's ``(B, content)`` patch relevance for the batch ``x``."""
    with torch.no_grad():
        maps = model.body.attention_maps(x)
    run, _ = trailing_run(maps)
    out = {"rollout": read_relevance(rollout(run), content, False),
           "raw_last_layer": read_relevance(fuse_heads(maps[-1]), content, False)}
    logits, live = maps_with_gradients(model, lambda: model(x))
    logits.gather(1, target[:, None]).sum().backward()  # each image's score reaches only its own maps
    grads = [m.grad for m in live][-len(run):]
    out["grad_rollout"] = read_relevance(grad_rollout([m.detach() for m in live][-len(run):], grads), content, False)
    g = torch.Generator().manual_seed(seed)
    out["random"] = torch.rand(x.shape[0], content, generator=g)
    return out


def measure(model, data, images: int, batch: int) -> list[dict]:
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in data.image_norm)
    black = -mean / std  # the normalised value of a black pixel: Fashion-MNIST's background
    sums = {m: {"deletion": [], "insertion": []} for m in METHODS}
    for start in range(0, images, batch):
        x = data.test.inputs[start:start + batch]
        with torch.no_grad():
            target = model(x).argmax(-1)
        maps_tokens = model.body.attention_maps(x[:1])[-1].shape[-1]
        grid, _ = content_grid(model.body, maps_tokens)

        def score(z: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return torch.softmax(model(z).float(), -1).gather(1, target[:, None])[:, 0]

        for name, rel in relevances(model, x, target, grid[0] * grid[1], start).items():
            for mode in ("deletion", "insertion"):
                curve = perturbation_curve(score, x, rel.detach(), grid, black, mode)
                sums[name][mode].append(area_under_curve(curve))
    rows = []
    for name in METHODS:
        d, i = torch.cat(sums[name]["deletion"]), torch.cat(sums[name]["insertion"])
        rows.append({"method": name, "deletion_auc": round(d.mean().item(), 4),
                     "deletion_se": round(d.std().item() / len(d) ** 0.5, 4), "insertion_auc": round(i.mean().item(), 4),
                     "insertion_se": round(i.std().item() / len(i) ** 0.5, 4),
                     "insertion_minus_deletion": round((i - d).mean().item(), 4)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=None, help="an existing image-classifier run (default: train --model)")
    ap.add_argument("--model", default="vit-fashion", help="preset trained when --run is not given")
    ap.add_argument("--steps", type=int, default=800, help="training steps when training (batch 128)")
    ap.add_argument("--images", type=int, default=500, help="test images explained")
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--quick", action="store_true", help="30 steps, 64 images")
    args = ap.parse_args()
    steps, images = (30, 64) if args.quick else (args.steps, args.images)
    run = Path(args.run) if args.run else train_model(args.model, steps, ROOT / "runs" / f"faithfulness-{args.model}")
    torch.manual_seed(0)
    model, data = image_classifier(run)
    rows = measure(model, data, min(images, len(data.test.inputs)), args.batch)
    print(f"faithfulness of patch rankings: {run} ({model.body.cfg.attention}), first {images} Fashion-MNIST test "
          "images, patches to black one at a time (deletion: lower is better; insertion: higher is better)")
    print_table(rows, ["method", "deletion_auc", "deletion_se", "insertion_auc", "insertion_se",
                       "insertion_minus_deletion"])
    path = write_json("faithfulness", {"run": str(run), "images": images, "rows": rows, "machine": machine_info()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
