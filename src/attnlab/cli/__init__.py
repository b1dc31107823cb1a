"""``attnlab`` command line: parse, then call one library function per subcommand (the CLI holds no logic of its own).

``attnlab.cli:main`` is the script's entry point; ``python -m attnlab.cli`` runs it too. Subcommands with many
options have their own module (:mod:`.embed`).

Numeric options take their ``type=`` from :mod:`.numbers` (ranges and finiteness checked while parsing); the
handler runs inside :func:`.errors.run_handler`, which turns bad input into one line on stderr. A parse error is
one line too (no usage block), exit code 2.

Add a subcommand with one decorated function that declares its arguments and returns the handler::

    @command("embed", "embed sentences with a trained encoder", examples=["attnlab embed RUN --text hi"])
    def _embed(p: argparse.ArgumentParser):
        p.add_argument("run_dir")
        return lambda args: print(...)   # the handler returns an exit code (None = 0)
"""

from __future__ import annotations

import argparse
import json
from typing import Callable

from .errors import run_handler
from .numbers import finite_float, integer, non_negative_int, positive_int, probability

Handler = Callable[[argparse.Namespace], "int | None"]
_COMMANDS: list[tuple[str, str, list[str], Callable[[argparse.ArgumentParser], Handler]]] = []


def command(name: str, help: str, examples: list[str]):
    """Register a subcommand: the decorated function adds arguments to its parser and returns the handler."""

    def deco(fn: Callable[[argparse.ArgumentParser], Handler]):
        if any(c[0] == name for c in _COMMANDS):
            raise ValueError(f"subcommand {name!r} is already registered")
        _COMMANDS.append((name, help, examples, fn))
        return fn

    return deco


def _config_and_overrides(p: argparse.ArgumentParser, what: str) -> None:
    """The positional ``[CONFIG] [key=value ...]`` and ``--no-progress`` of the commands that train."""
    p.add_argument("args", nargs="*", metavar="[CONFIG] [key=value ...]", help=what)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_folder_flags(p: argparse.ArgumentParser) -> None:
    """``--resume`` and ``--overwrite`` of the commands that write a run folder."""
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in train.run_dir")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run in train.run_dir and start again")


@command("train", "train a model from a YAML recipe (or continue a run with --resume)", examples=[
    "attnlab train configs/char-gpt.yaml",
    "attnlab train configs/char-gpt.yaml model.attention=softmax train.lr=3e-4 train.steps=500",
    "attnlab train runs/char-gpt --resume                # continue an interrupted run",
    "attnlab train runs/char-gpt --resume train.steps=4000  # train an existing run longer",
    "torchrun --nproc_per_node=2 -m attnlab.cli train configs/char-gpt.yaml   # DDP",
])
def _train(p: argparse.ArgumentParser) -> Handler:
    _config_and_overrides(p, "a YAML recipe or a run directory, then dotted overrides (see docs/config.md)")
    _run_folder_flags(p)

    def run(args: argparse.Namespace) -> int:
        from ..config import load_config
        from ..train.trainer import train

        config, overrides = _split_config_args(args.args)
        cfg = load_config(config, overrides)
        if config is not None and _is_run_dir(config) and not any(o.startswith("train.run_dir=") for o in overrides):
            cfg.train.run_dir = str(config)
        result = train(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
        return 130 if result.stopped == "interrupted" else 0

    return run


@command("generate", "sample text from a trained run", examples=[
    "attnlab generate runs/char-gpt --prompt 'And God said'",
    "attnlab generate runs/char-gpt --prompt 'In the beginning' --max-new-tokens 400 --temperature 0.7 --top-k 20",
    "attnlab generate runs/char-gpt --prompt 'Jesus' --num-samples 3 --top-p 0.9 --seed 1",
])
def _generate(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("run_dir", help="run directory written by `attnlab train`")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=non_negative_int, default=300,
                   help="tokens to generate (default 300; 0 prints the prompt)")
    p.add_argument("--temperature", type=finite_float(min=0), default=0.8, help="0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=positive_int, default=None, help="sample only from the k most likely tokens")
    p.add_argument("--top-p", type=probability, default=None,
                   help="nucleus sampling: smallest set with this mass, in (0, 1]")
    p.add_argument("--seed", type=integer, default=0, help="sampling seed (same seed, same text)")
    p.add_argument("--num-samples", type=positive_int, default=1, help="independent samples, 1 or more (default 1)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")

    def run(args: argparse.Namespace) -> None:
        from ..train.run import generate_text, load_run

        loaded = load_run(args.run_dir, args.device)
        texts = generate_text(loaded, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                              args.seed, args.num_samples)
        for i, text in enumerate(texts):
            if args.num_samples > 1:
                print(f"--- sample {i + 1} (step {loaded.checkpoint.step}) ---")
            print(args.prompt + text)

    return run


@command("eval", "evaluate a trained run on its whole validation (or training) split", examples=[
    "attnlab eval runs/char-gpt",
    "attnlab eval runs/char-gpt --split train --max-batches 50",
    "attnlab eval runs/seq2seq-reversal   # greedy decoding of the test split: exact match, character error rate",
    "attnlab eval runs/vision-fashion --tta flip   # each test image and its mirror image, probabilities averaged",
])
def _eval(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("run_dir", help="run directory written by `attnlab train`")
    p.add_argument("--split", choices=["val", "train"], default="val",
                   help="val: the validation split (a suite dataset's test split); train: the training split, "
                        "without augmentation (language models and classifiers), written to eval-train.json")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="windows per batch, 1 or more (default: the run's data.batch_size)")
    p.add_argument("--max-batches", type=positive_int, default=None,
                   help="stop after this many batches, 1 or more (default: the whole split); the result goes to "
                        "eval-first<N>.json, beside the full eval.json")
    p.add_argument("--device", default="auto")
    p.add_argument("--tta", choices=["flip"], default=None,
                   help="test-time augmentation of an image classifier: 'flip' averages the class probabilities of "
                        "each test image and its mirror image (for models trained with flip: true)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true")

    def run(args: argparse.Namespace) -> None:
        from ..train.run import evaluate_run
        from .results import eval_lines

        r = evaluate_run(args.run_dir, args.split, args.batch_size, args.max_batches, args.device,
                         progress=not args.no_progress, tta=args.tta)
        print(json.dumps(r) if args.json else "\n".join(eval_lines(r, args.split)))

    return run


@command("forecast", "forecast the steps after a CSV history with a trained forecast run", examples=[
    "attnlab forecast runs/forecast-taylor --input recent.csv --output forecast.csv",
    "attnlab forecast runs/forecast-taylor --input recent.csv --output f.csv --plot f.png --holdout",
])
def _forecast(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("run_dir", help="run directory of an `attnlab train` forecast run")
    p.add_argument("--input", required=True, help="CSV with a time column and the run's target and exogenous columns")
    p.add_argument("--output", required=True, help="CSV written with one row per forecast step (original units)")
    p.add_argument("--plot", default=None, help="PNG of history, forecast (and truth with --holdout)")
    p.add_argument("--timestamp", default=None, help="time column of the input (default: the run's data.timestamp, "
                                                     "else 'timestamp')")
    p.add_argument("--holdout", action="store_true", help="keep the input's last horizon rows back as the truth")
    p.add_argument("--future", default=None, help="CSV of the exogenous columns over the next horizon steps (a "
                                                  "model trained with model.future_exog)")
    p.add_argument("--device", default="auto")

    def run(args: argparse.Namespace) -> None:
        from ..train.forecast_run import forecast_file

        r = forecast_file(args.run_dir, args.input, args.output, args.plot, args.timestamp, args.holdout, args.device,
                          args.future)
        print(f"wrote {r['rows']} forecast steps to {args.output}" + (f" (MAE {r['mae']:.4g} in original units)"
                                                                        if "mae" in r else ""))

    return run


@command("distill", "distill a pretrained encoder into a smaller or sparser student (MiniLM), export and evaluate it",
         examples=[
    "attnlab distill configs/distill/minilm-l3.yaml",
    "attnlab distill configs/distill/minilm-l3.yaml objective.losses='{v2: 1}' model.dim=192",
    "attnlab distill runs/distill-l3 --resume        # continue an interrupted distillation",
    "attnlab distill configs/distill/minilm-l3.yaml --no-train train.run_dir=runs/l3-drop   # layer drop only",
    "attnlab distill --eval-only minilm              # the evaluation table of any encoder folder",
])
def _distill(p: argparse.ArgumentParser) -> Handler:
    _config_and_overrides(p, "a distillation recipe (configs/distill/) or a distill run folder, then dotted overrides")
    _run_folder_flags(p)
    p.add_argument("--no-train", action="store_true", help="export and evaluate the student as initialised")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation table")
    p.add_argument("--eval-only", metavar="MODEL", default=None,
                   help="only evaluate MODEL (minilm, an encoder folder or a distill run) and print its row")

    def run(args: argparse.Namespace) -> None:
        from ..distill import distill, evaluate_folder, load_distill_config

        if args.eval_only is not None:
            if args.args:
                raise ValueError("--eval-only takes no recipe or overrides; give just the model to evaluate")
            evaluate_folder(args.eval_only)
            return
        path, overrides = _split_config_args(args.args)
        cfg = load_distill_config(path, overrides)
        r = distill(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
                    evaluate=not args.no_eval, train=not args.no_train)
        if r.export is not None:
            print(f"student exported to {r.export} (SentenceTransformer('{r.export}') or attnlab.embed(texts, "
                  f"model='{r.export}'))")

    return run


@command("list", "list registered attention kernels, model presets, datasets or objectives", examples=[
    "attnlab list attention", "attnlab list models", "attnlab list datasets", "attnlab list objectives",
])
def _list(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("what", choices=["attention", "models", "datasets", "objectives", "tasks"],
                   help="datasets: the embedded sources (data.dataset takes the text ones) and the comparison "
                        "suite's datasets (the name of a compare task); objectives: the training steps objective.name "
                        "takes (`tasks` is their old name and lists the same)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    def run(args: argparse.Namespace) -> None:
        rows = _list_rows(args.what)
        if args.json:
            print(json.dumps(rows, default=str, indent=1))
            return
        width = max(len(r["name"]) for r in rows) + 2
        for r in rows:
            print(r["name"].ljust(width) + r["info"])

    return run


@command("embed", "sentence embeddings with a pretrained encoder (default all-MiniLM-L6-v2)", examples=[
    "attnlab embed --input sentences.txt --output emb.npy",
    "attnlab embed --model path/to/hf-bert --input s.txt --output e.npy --dtype bfloat16 --batch-size 64",
])
def _embed(p: argparse.ArgumentParser) -> Handler:
    from .embed import add_embed_arguments, cmd_embed  # argparse only; torch loads in cmd_embed

    add_embed_arguments(p)
    return cmd_embed


@command("viz", "explain an input of a trained run: attention rollout, raw maps, attention distance, head importance",
         examples=__import__("attnlab.cli.viz", fromlist=["EXAMPLES"]).EXAMPLES)
def _viz(p: argparse.ArgumentParser) -> Handler:
    from .viz import add_viz_arguments, cmd_viz  # argparse only; torch loads in cmd_viz

    add_viz_arguments(p)
    return cmd_viz


@command("compare", "train a grid of attention variants x tasks x seeds and tabulate quality, speed, memory",
         examples=[
             "attnlab compare configs/compare/quick.yaml",
             "attnlab compare configs/compare/quick.yaml compare.out_dir=runs/cmp base.train.steps=100",
             "attnlab compare --report runs/compare-quick      # rebuild tables and plots from results.jsonl",
             "attnlab compare configs/compare/quick.yaml --samples 2   # then sample from the best char LM",
         ])
def _compare(p: argparse.ArgumentParser) -> Handler:
    _config_and_overrides(p, "a compare YAML file, then dotted overrides (compare.out_dir=..., base.train.steps=...)")
    p.add_argument("--report", metavar="RUN_DIR", help="only rebuild the report of RUN_DIR (no training)")
    p.add_argument("--samples", type=non_negative_int, default=0, metavar="N",
                   help="after the grid, print N samples from the best char_lm cell (default 0: none; needs "
                        "compare.keep_checkpoints)")
    p.add_argument("--prompt", default="And God said", help="prompt for --samples (default: 'And God said')")

    def run(args: argparse.Namespace) -> int:
        from ..compare.report import write_report

        if args.report:
            if args.args:
                raise ValueError(f"--report takes no CONFIG or overrides, got {args.args}")
            print(write_report(args.report))
            return 0
        from ..compare.config import load_compare_config
        from ..compare.grid import run_grid

        config, overrides = _split_config_args(args.args)
        if config is None:
            raise ValueError("give a compare config (e.g. configs/compare/quick.yaml) or --report RUN_DIR")
        cfg = load_compare_config(config, overrides)
        run_grid(cfg, progress=not args.no_progress, report=False)
        print(write_report(cfg.compare.out_dir))
        if args.samples > 0:
            _print_best_lm_samples(cfg, args.samples, args.prompt)
        return 0

    return run


def _print_best_lm_samples(cfg, num_samples: int, prompt: str) -> None:
    """Samples from the char_lm cell with the lowest bits/char (its checkpoint must have been kept)."""
    from pathlib import Path

    from ..compare.config import CHAR_LM
    from ..compare.grid import RESULTS, read_results
    from ..train.run import generate_text, load_run

    records = [r for r in read_results(Path(cfg.compare.out_dir) / RESULTS) if r.get("task_name") == CHAR_LM
               and r.get("quality") is not None]
    if not records:
        print("no finished char_lm cell to sample from (add task char_lm to the grid)")
        return
    best = min(records, key=lambda r: r["quality"])
    cell = next(c for c in cfg.cells() if c.key == best["key"])
    run_dir = cell.run_config().train.run_dir
    if not cfg.compare.keep_checkpoints:
        raise ValueError(f"--samples needs the cells' checkpoints; set compare.keep_checkpoints=true "
                         f"(best char LM: {best['key']}, {best['quality']:.3f} bits/char)")
    loaded = load_run(run_dir)
    print(f"\nsamples from the best char LM, {best['key']} ({best['quality']:.3f} bits/char):")
    for i, text in enumerate(generate_text(loaded, prompt, 300, 0.8, None, None, 0, num_samples)):
        print(f"--- sample {i + 1} ---\n{prompt}{text}")


def _list_rows(what: str) -> list[dict]:
    if what == "attention":
        from ..attention import describe_attention

        from ..attention.capabilities import LISTED_FLAGS as FLAGS

        def caps(c: dict) -> str:  # the declared abilities, then the cost
            return ", ".join(f for f in FLAGS if c.get(f)) + f"; {c.get('complexity', '')}"

        return [{"name": r["name"], "info": f"{r['summary']}  [{caps(r['capabilities'])}]",
                 "options": r["options"], "capabilities": r["capabilities"]} for r in describe_attention()]
    if what == "models":
        from ..models import describe_models

        return [{"name": r["name"], "info": f"{r['family']}: {r['description']}"} for r in describe_models()]
    if what == "datasets":
        from ..data.registry import describe_datasets

        return [{"name": r["name"], "group": r["group"], "kind": r["kind"], "installed": r["installed"],
                 "info": f"{r['group']:<8} {r['kind']:<14} {'installed' if r['installed'] else 'missing':<9} "
                         f"{r['description']}" + ("" if r["installed"] else f"  ({r['install']})")}
                for r in describe_datasets()]
    from ..objectives import get_objective, list_objectives  # `tasks` is the old name of `objectives`

    return [{"name": n, "info": ((get_objective(n).__doc__ or "").strip().splitlines() or [""])[0]}
            for n in list_objectives()]


def _split_config_args(items: list[str]) -> tuple[str | None, list[str]]:
    """The first item without ``=`` is the config path; the rest must be ``key=value`` overrides."""
    config, overrides = None, []
    for item in items:
        if "=" in item:
            overrides.append(item)
        elif config is None and not overrides:
            config = item
        else:
            raise ValueError(f"unexpected argument {item!r}: give one CONFIG first, then key=value overrides")
    return config, overrides


def _is_run_dir(path: str) -> bool:
    from pathlib import Path

    return Path(path).is_dir() and (Path(path) / "config.yaml").is_file()


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (no usage block) pointing at ``--help``; exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``attnlab`` parser: one subparser per registered subcommand, all of them :class:`_Parser`."""
    parser = _Parser(
        prog="attnlab", description="attnlab: every attention mechanism behind one interface.",
        epilog="Run `attnlab COMMAND --help` for examples.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text, examples, fn in _COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text,
                           epilog="examples:\n  " + "\n  ".join(examples),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(handler=fn(p))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``attnlab`` script; returns the exit code (2 for bad input, 1 when the file system
    refuses, 130 for Ctrl-C; see :mod:`.errors`). ``ATTNLAB_DEBUG=1`` shows tracebacks.

    Raises:
        SystemExit: a parse error (one line, code 2) or ``--help`` (code 0).
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # overrides after an option (`train CONFIG --resume a.b=1`) arrive here; only `args` lists take them
        if not isinstance(getattr(args, "args", None), list) or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.args += extra
    return run_handler(args.command, lambda: args.handler(args))

