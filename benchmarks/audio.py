"""Audio and bytes: keyword accuracy of AST, PaSST and ByteFormer at one training time, ByteFormer's file types,
filterbank throughput against kaldi-native-fbank, and AST's forward speed against transformers' ASTModel.

1. Keywords (``configs/audio-keywords.yaml``, ``configs/bytes-keywords.yaml``): ast-small, passt-small (patchout) and
   byteformer-small (8 kHz mu-law WAV bytes) each train for ``--minutes`` of training steps (the step count comes from
   a short probe run of each), then ``attnlab eval`` scores the 24 held-out voices; the spectrogram models are also
   scored on Debian's real recordings of the digits (Asterisk's prompts: one speaker, telephone audio, 10 clips).
2. File types (``configs/bytes-filetypes.yaml``): byteformer-small on this machine's files, first 1,024 bytes, and a
   window inside each file (``window=random``).
3. Filterbank: 200 one-second clips at 16 kHz, 80 mel bins (Kaldi refuses 128 bins at 16 kHz, whose lowest filters
   are empty; AST tolerates them): attnlab's batched torch code against kaldi-native-fbank
   (one clip at a time, its only interface), alternating, paired.
4. AST forward: the ast-small shape built by transformers with random weights, loaded by ``attnlab.load_pretrained``
   (outputs checked equal), batch 16, fp32 and bf16 autocast, alternating repetitions, paired ratios.

    python benchmarks/audio.py                  # ~25 min on 2 cores
    python benchmarks/audio.py --only speed     # parts 3 and 4 (~1 min)
    python benchmarks/audio.py --minutes 1      # a quick pass over everything
    python benchmarks/audio.py --only keywords --models ast-small-8k   # AST on the telephone band
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, print_table, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KEYWORD_MODELS = [("ast-small", "audio-keywords", []), ("passt-small", "audio-keywords", ["model.name=passt-small"]),
                  ("byteformer-small", "bytes-keywords", []),
                  # telephone band: trained at 8 kHz (64 mel bins), the rate of the Asterisk recordings
                  ("ast-small-8k", "audio-keywords", ["data.options.sample_rate=8000", "data.options.mel_bins=64",
                                                      "model.mel_bins=64"])]
DEFAULT_MODELS = ["ast-small", "passt-small", "byteformer-small"]


def _train(recipe: str, overrides: list[str], run_dir: Path, steps: int):
    from attnlab.config import load_config
    from attnlab.train import train

    every = max(1, steps)
    cfg = load_config(ROOT / "configs" / f"{recipe}.yaml", [*overrides, f"train.steps={steps}",
                                                             f"train.run_dir={run_dir}", f"train.eval_every={every}",
                                                             f"train.checkpoint_every={every}",
                                                             f"train.warmup_steps={min(100, steps // 10)}"])
    return train(cfg, overwrite=True, progress=False)


def asterisk_accuracy(run_dir: Path) -> float:
    """Accuracy of a keyword run's model on the real Asterisk digit recordings (same training normalisation)."""
    from attnlab.config import load_config
    from attnlab.objectives import model_outputs
    from attnlab.train.build import build_for_config
    from attnlab.train.checkpoint import latest_checkpoint, load_weights
    from attnlab.train.task_feeds import feed_for_config

    cfg = load_config(run_dir / "config.yaml", ["data.options.test=asterisk"])
    feed = feed_for_config(cfg)
    _, model, _ = build_for_config(cfg, torch.device("cpu"), feed)
    load_weights(model, latest_checkpoint(run_dir))
    test = feed.dataset.test
    with torch.no_grad():
        logits = model_outputs("classify", model.eval(), test.batch(torch.arange(len(test))))
    return float((logits.argmax(-1) == test.targets).float().mean())


def keywords(minutes: float, out: Path, models: list[str]) -> list[dict]:
    from attnlab.train import evaluate_run

    rows = []
    for name, recipe, overrides in [m for m in KEYWORD_MODELS if m[0] in models]:
        probe = _train(recipe, overrides, out / f"probe-{name}", 8)
        steps = max(10, int(minutes * 60 / (probe.train_seconds / 8)))
        result = _train(recipe, overrides, out / name, steps)
        scores = evaluate_run(out / name, progress=False)
        row = {"model": name, "input": "WAV bytes" if "bytes" in recipe else "spectrogram", "steps": steps,
               "train_minutes": round(result.train_seconds / 60, 2), "parameters": result.num_parameters,
               "held_out_voices": scores["accuracy"]}
        if "bytes" not in recipe:
            row["asterisk_digits"] = asterisk_accuracy(out / name)
        rows.append(row)
        print(row, flush=True)
    return rows


def file_types(out: Path, steps: int | None) -> list[dict]:
    from attnlab.config import load_config
    from attnlab.train import evaluate_run, train

    rows = []
    for window in ("start", "random"):
        overrides = [f"data.options.window={window}"] + ([f"train.steps={steps}"] if steps else [])
        run = out / f"filetypes-{window}"
        cfg = load_config(ROOT / "configs" / "bytes-filetypes.yaml", [*overrides, f"train.run_dir={run}"])
        result = train(cfg, overwrite=True, progress=False)
        scores = evaluate_run(run, progress=False)
        rows.append({"window": window, "steps": cfg.train.steps, "train_minutes": round(result.train_seconds / 60, 2),
                     "classes": len(scores["confusion_matrix"]), "test_accuracy": scores["accuracy"],
                     "test_files": scores["examples"]})
        print(rows[-1], flush=True)
    return rows


def fbank_speed(reps: int) -> dict:
    import kaldi_native_fbank as knf

    from attnlab.data.audio import fbank

    g = np.random.default_rng(0)
    waves = torch.from_numpy(g.standard_normal((200, 16000)).astype(np.float32) * 0.1)

    def ours(dtype):
        return lambda: fbank(waves, 16000, 80, dtype=dtype)

    def reference():
        opts = knf.FbankOptions()
        opts.frame_opts.dither, opts.mel_opts.num_bins = 0.0, 80
        for w in waves.numpy() * 32768:
            online = knf.OnlineFbank(opts)
            online.accept_waveform(16000, w.tolist())
            online.input_finished()
            np.array([online.get_frame(i) for i in range(online.num_frames_ready)])

    return paired({"attnlab": ours(torch.float64), "attnlab-float32": ours(torch.float32),
                   "kaldi-native-fbank": reference}, reps, items=len(waves))


def paired(runs: dict, reps: int, items: int) -> dict:
    """Alternating repetitions of ``runs`` (attnlab's first, named ``attnlab*``): items/s (median) and the paired
    ratios ``<attnlab run>_vs_<peer>`` (peer time / attnlab time, median over repetitions)."""
    for fn in runs.values():
        fn()
    times = {k: [] for k in runs}
    for _ in range(reps):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    ours = [k for k in runs if k.startswith("attnlab")]
    return {**{f"{k}_per_s": items / statistics.median(v) for k, v in times.items()},
            **{f"{a}_vs_{k}": statistics.median(o / t for t, o in zip(times[a], v))
               for a in ours for k, v in times.items() if k not in ours}}


def ast_speed(reps: int) -> dict:
    import transformers

    import attnlab

    shape = dict(hidden_size=192, num_hidden_layers=6, num_attention_heads=3, intermediate_size=768, patch_size=16,
                 frequency_stride=10, time_stride=10, max_length=98, num_mel_bins=128, hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    hf = transformers.ASTModel(transformers.ASTConfig(**shape)).eval()
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        ours = attnlab.load_pretrained(folder).eval()
    x = torch.randn(16, 98, 128)
    with torch.no_grad():
        diff = float((ours(x) - hf(x).last_hidden_state).abs().max())
    out = {"max_abs_diff_fp32": diff}
    for precision in ("fp32", "bf16"):
        ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext

        def run(model, call):
            def go():
                with torch.no_grad(), ctx():
                    call(model)
            return go

        r = paired({"attnlab": run(ours, lambda m: m(x)), "transformers": run(hf, lambda m: m(x).last_hidden_state)},
                   reps, items=len(x))
        out[precision] = r
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=6.0, help="training minutes per keyword model")
    ap.add_argument("--only", choices=["keywords", "filetypes", "speed"], help="one part only")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=[m[0] for m in KEYWORD_MODELS],
                    help="keyword models (ast-small-8k: AST trained on the telephone band)")
    ap.add_argument("--out", default="runs/bench-audio")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out, result = Path(args.out), {"machine": machine_info(), "minutes": args.minutes}
    if args.only in (None, "speed"):
        result["fbank"] = fbank_speed(args.reps)
        result["ast_forward"] = ast_speed(args.reps)
        f, a = result["fbank"], result["ast_forward"]
        print_table([{"what": f"filterbank clips/s ({name})", "attnlab": f[f"{run}_per_s"],
                      "peer": f["kaldi-native-fbank_per_s"], "paired": f[f"{run}_vs_kaldi-native-fbank"]}
                     for run, name in (("attnlab", "float64"), ("attnlab-float32", "float32"))]
                    + [{"what": f"AST forward {p} spectrograms/s", "attnlab": a[p]["attnlab_per_s"],
                        "peer": a[p]["transformers_per_s"], "paired": a[p]["attnlab_vs_transformers"]}
                       for p in ("fp32", "bf16")], ["what", "attnlab", "peer", "paired"])
    if args.only in (None, "keywords"):
        result["keywords"] = keywords(args.minutes, out, args.models)
        print_table(result["keywords"], ["model", "input", "steps", "train_minutes", "held_out_voices",
                                         "asterisk_digits"])
    if args.only in (None, "filetypes"):
        result["file_types"] = file_types(out, 100 if args.minutes < 2 else None)  # the recipe's steps
        print_table(result["file_types"], ["window", "steps", "train_minutes", "classes", "test_accuracy"])
    name = "audio" if args.only is None else f"audio_{args.only}"
    if args.models != DEFAULT_MODELS:
        name += "_" + "_".join(args.models)
    print(f"wrote {write_json(name, result)}")


if __name__ == "__main__":
    main()
