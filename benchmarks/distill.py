"""MiniLM distillation of the packaged all-MiniLM-L6-v2 into 3-layer students, against the baselines.

Every student is the teacher's architecture with 3 layers (384 wide, 12 heads) trained with the same budget (steps,
batch 32, KJV verses + Rotten Tomatoes snippets) from `configs/distill/minilm-l3.yaml`:

- v1 (attention + value relations), v2 (Q-Q, K-K, V-V relations): seeded with teacher layers 2, 4, 6;
- layer drop: those teacher layers, no training; layer drop + embedding MSE (sentence-transformers' distillation);
- random init + v1; a sparse student (sliding_window, 16 each side, v2; `configs/distill/sparse-l3.yaml`).

Then the evaluation table of `attnlab distill` for the teacher and each student in this process: Lee Spearman,
the Rotten Tomatoes probe accuracy, parameters, sentences/s (shares of the teacher in brackets).

    python benchmarks/distill.py                 # 1,500 steps per student (the recipe; ~10 min each on 2 cores)
    python benchmarks/distill.py --steps 600
    python benchmarks/distill.py --quick         # 100 steps: checks the pipeline, not the targets
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from attnlab.core.io import write_json
from attnlab.distill import distill, load_distill_config
from attnlab.distill.models import load_teacher
from attnlab.distill.run import evaluation_table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine_info  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # name -> (recipe, overrides, train?)
    "v1": ("minilm-l3", [], True),
    "v2": ("minilm-l3", ["objective.losses={v2: 1}"], True),
    "layer drop": ("minilm-l3", [], False),
    "layer drop + embedding MSE": ("minilm-l3", ["objective.losses={embedding_mse: 1}"], True),
    "random init + v1": ("minilm-l3", ["model.init=random", "train.lr=5e-4"], True),
    "sparse (sliding_window) v2": ("sparse-l3", [], True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=None, help="steps per student (default: the recipe's 1,500)")
    ap.add_argument("--quick", action="store_true", help="100 steps per student")
    ap.add_argument("--out", default="runs/bench-distill", help="run folders of the students")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = 100 if args.quick else args.steps
    models, seconds = {"teacher (all-MiniLM-L6-v2)": load_teacher("minilm")}, {}
    for name, (recipe, overrides, train) in VARIANTS.items():
        run_dir = Path(args.out) / name.replace(" ", "-").replace("(", "").replace(")", "").replace("+", "plus")
        more = [f"train.run_dir={run_dir}"] + ([f"train.steps={steps}"] if steps else [])
        cfg = load_distill_config(ROOT / "configs" / "distill" / f"{recipe}.yaml", overrides + more)
        t0 = time.perf_counter()
        result = distill(cfg, overwrite=True, evaluate=False, train=train, progress=False)
        seconds[name] = round(time.perf_counter() - t0, 1)
        print(f"== {name}: {result.step} steps in {seconds[name]} s", flush=True)
        models[name] = load_teacher(str(run_dir))
    rows, table = evaluation_table(models)
    teacher = rows[0]
    summary = {r["model"]: {"lee_share": r["lee_spearman"] / teacher["lee_spearman"],
                            "probe_share": r["probe_accuracy"] / teacher["probe_accuracy"],
                            "speedup": r["sentences_per_s"] / teacher["sentences_per_s"]} for r in rows[1:]}
    write_json(RESULTS / "distill.json", {"benchmark": "distill", "steps": steps or 1500, "train_seconds": seconds,
                                          "machine": machine_info(), "rows": rows, "shares": summary, "table": table})
    print(f"wrote {RESULTS / 'distill.json'}")


if __name__ == "__main__":
    main()
