"""The `attnlab` command line: list, train, generate, eval, --help, and errors as exit code 2 with a message."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from attnlab.cli import build_parser, main

CORPUS = ("In the beginning God created the heaven and the earth. And the earth was without form, and void; "
          "and darkness was upon the face of the deep. And God said, Let there be light: and there was light.\n")


@pytest.fixture
def recipe(tmp_path):
    (tmp_path / "corpus.txt").write_text(CORPUS * 40, encoding="utf-8")
    cfg = {
        "model": {"name": "gpt-tiny", "dim": 32, "num_layers": 1, "num_heads": 2, "max_seq_len": 32},
        "data": {"dataset": str(tmp_path / "corpus.txt"), "batch_size": 8, "seq_len": 32},
        "train": {"steps": 30, "lr": 1e-2, "warmup_steps": 3, "eval_every": 15, "eval_batches": 2,
                  "precision": "fp32", "run_dir": str(tmp_path / "run")},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_generate_eval(recipe, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(recipe), "train.steps=20", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "completed at step 20" in out and "final val loss" in out
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["steps"] == 20

    assert main(["generate", str(run), "--prompt", "And God", "--max-new-tokens", "40", "--seed", "3"]) == 0
    first = capsys.readouterr().out
    assert main(["generate", str(run), "--prompt", "And God", "--max-new-tokens", "40", "--seed", "3"]) == 0
    assert capsys.readouterr().out == first  # same seed, same text
    assert first.startswith("And God") and len(first) == len("And God") + 40 + 1  # print adds one newline

    assert main(["generate", str(run), "--prompt", "Ab", "--num-samples", "2", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.count("--- sample") == 2

    assert main(["eval", str(run), "--json", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "val" and result["step"] == 20 and result["tokens"] > 700
    assert 0.0 < result["loss"] < 3.5 and result["bits_per_char"] == pytest.approx(result["loss"] / 0.6931471805599453)
    assert json.loads((run / "eval.json").read_text()) == result

    # a run directory is a config too: continue it for more steps
    assert main(["train", str(run), "--resume", "train.steps=25", "--no-progress"]) == 0
    assert "completed at step 25" in capsys.readouterr().out


def test_compare_prints_samples_from_the_best_char_lm(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text(CORPUS * 40, encoding="utf-8")
    grid = {"compare": {"out_dir": str(tmp_path / "cmp"), "seeds": [0], "keep_checkpoints": True, "inference_batches": 1,
                        "variants": [{"name": "softmax"}, {"name": "sliding_window", "options": {"window": 4}}],
                        "tasks": [{"name": "char_lm"}]},
            "base": {"model": {"name": "gpt-tiny", "dim": 32, "num_layers": 1},
                     "data": {"dataset": str(tmp_path / "corpus.txt"), "seq_len": 32, "batch_size": 4},
                     "train": {"steps": 4, "warmup_steps": 1, "eval_every": 4, "eval_batches": 1, "precision": "fp32"}}}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    assert main(["compare", str(path), "--no-progress", "--samples", "2", "--prompt", "And God"]) == 0
    out = capsys.readouterr().out
    best = min((json.loads(line) for line in open(tmp_path / "cmp" / "results.jsonl")), key=lambda r: r["quality"])
    assert f"samples from the best char LM, {best['key']}" in out
    assert out.count("--- sample") == 2 and out.count("\nAnd God") == 2
    # without kept checkpoints there is nothing to sample from: a clear error, not a traceback
    grid["compare"].update(keep_checkpoints=False, out_dir=str(tmp_path / "cmp2"))
    path.write_text(yaml.safe_dump(grid))
    assert main(["compare", str(path), "--no-progress", "--samples", "1"]) == 2
    assert "compare.keep_checkpoints=true" in capsys.readouterr().err


@pytest.mark.parametrize("argv, fragment", [
    (["train", "{recipe}", "train.lrr=1"], "Did you mean train.lr"),
    (["train", "{recipe}", "train.steps=abc"], "expected int"),
    (["train", "{recipe}", "extra.yaml"], "unexpected argument 'extra.yaml'"),
    (["train", "{recipe}", "--resume"], "no checkpoint"),
    (["generate", "{tmp}/nowhere"], "not a run directory"),
    (["eval", "{tmp}/nowhere"], "not a run directory"),
    (["train", "{recipe}", "data.dataset={tmp}/missing.txt"], "neither an embedded text dataset"),
])
def test_errors_are_messages_not_tracebacks(recipe, tmp_path, capsys, argv, fragment):
    argv = [a.format(recipe=recipe, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err, err


def test_generate_rejects_unknown_characters(recipe, tmp_path, capsys):
    assert main(["train", str(recipe), "train.steps=2", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "run"), "--prompt", "Zebra"]) == 2
    assert "not in the vocabulary" in capsys.readouterr().err


@pytest.mark.parametrize("what, expected", [
    ("attention", "softmax"), ("models", "gpt-char-small"), ("datasets", "kjv"), ("tasks", "lm"),
    ("objectives", "lm"), ("datasets", "mqar"),
])
def test_list(capsys, what, expected):
    assert main(["list", what]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[0] == expected for line in lines)
    assert main(["list", what, "--json"]) == 0
    assert expected in [r["name"] for r in json.loads(capsys.readouterr().out)]


def test_list_tasks_is_the_old_name_of_list_objectives_and_datasets_have_a_kind(capsys):
    assert main(["list", "objectives"]) == 0
    objectives = capsys.readouterr().out
    assert main(["list", "tasks"]) == 0
    assert capsys.readouterr().out == objectives
    assert main(["list", "datasets", "--json"]) == 0
    rows = {(r["group"], r["name"]): r for r in json.loads(capsys.readouterr().out)}
    assert rows["source", "kjv"]["kind"] == "text" and rows["dataset", "mqar"]["kind"] == "lm"
    assert rows["dataset", "listops"]["kind"] == "classify"
    assert rows["dataset", "icl_regression"]["kind"] == "regression"


def test_every_subcommand_has_help_with_examples(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"train", "generate", "eval", "list"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert "examples:" in out and f"attnlab {name}" in out


def test_entry_point_runs_as_a_program():
    proc = subprocess.run([sys.executable, "-m", "attnlab.cli", "list", "datasets"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "kjv" in proc.stdout


def test_list_attention_shows_each_kernels_capabilities(capsys):
    assert main(["list", "attention"]) == 0
    axial = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("axial "))
    assert "grid_2d" in axial and "kv_cache" not in axial and "O(N*(rows+cols))" in axial
    assert main(["list", "attention", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["window"]["capabilities"]["requires_grid"] and not rows["softmax"]["capabilities"]["requires_grid"]
