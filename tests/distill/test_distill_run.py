"""`attnlab distill` end to end with the packaged all-MiniLM-L6-v2 as teacher: training lowers the loss and raises
the Lee Spearman, the export loads in sentence-transformers with the same vectors, gradients reach only the student,
a copy of the teacher has zero loss, the teacher assistant chain, and one-line errors for bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from attnlab.cli import main
from attnlab.distill import distill, load_distill_config
from attnlab.data.text.sentences import probe_split
from attnlab.distill.evaluate import lee_spearman
from attnlab.distill.feed import SentenceFeed
from attnlab.distill.models import build_student, load_teacher
from attnlab.distill.run import evaluation_table
from attnlab.distill.step import DistillStep
from attnlab.infer.embed import embed
from attnlab.interop.minilm import minilm_path

MLM_RECIPE = str(Path(__file__).resolve().parents[2] / "configs" / "mlm-kjv.yaml")
SMALL = ["data.max_sentences=400", "data.batch_size=16", "train.eval_batches=2", "model.dropout=0.0",
         "model.attention_options={dropout: 0.0}", "train.warmup_steps=5", "train.lr=2e-4"]


@pytest.fixture(scope="module")
def teacher():
    return load_teacher("minilm")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-layer v1 student (teacher layers 3 and 6) after 40 single-thread steps, and its Lee before training."""
    run = tmp_path_factory.mktemp("distill") / "run"
    cfg = load_distill_config(None, SMALL + ["model.num_layers=2", "model.init=teacher_layers", "train.steps=40",
                                             "train.eval_every=40", f"train.run_dir={run}"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        before = lee_spearman(build_student(cfg.model, load_teacher("minilm")))
        result = distill(cfg, evaluate=False, progress=False)
    finally:
        torch.set_num_threads(threads)
    return result, before


def test_distillation_lowers_the_loss_and_raises_lee_spearman(trained):
    result, before = trained
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert result.step == 40 and rows[-1]["loss"] < 0.6 * rows[0]["loss"]
    after = lee_spearman(load_teacher(str(result.run_dir)))  # a distill run folder is a teacher: its export
    assert after > before + 0.03, (before, after)


def test_export_loads_in_sentence_transformers_with_the_same_vectors(trained):
    st = pytest.importorskip("sentence_transformers")
    folder = trained[0].export
    assert json.loads((folder / "1_Pooling" / "config.json").read_text())["word_embedding_dimension"] == 384
    texts = ["The cat sat on the mat.", "And God said, Let there be light: and there was light.", "ok",
             "A slow, thoughtful film whose quiet final act earns every one of its tears " * 3]
    theirs = torch.tensor(st.SentenceTransformer(str(folder), device="cpu").encode(texts))
    ours = embed(texts, model=str(folder), progress=False)
    assert float((theirs * ours).sum(-1).min()) >= 0.99999


def test_evaluation_table_rows_and_json(trained, tmp_path, teacher):
    student = load_teacher(str(trained[0].run_dir))
    split = probe_split(train=600, test=300)  # the table's own 4,000 / 2,000 in the benchmark
    rows, table = evaluation_table({"teacher": teacher, "student": student}, tmp_path / "eval.json", split)
    assert [r["layers"] for r in rows] == [6, 2] and rows[1]["parameters"] < rows[0]["parameters"]
    assert all(0.3 < r["lee_spearman"] < 1 and 0.6 < r["probe_accuracy"] <= 1 and r["sentences_per_s"] > 0
               for r in rows)
    assert "| student | 2 x 384 (12) | softmax |" in table and "%)" in table
    assert json.loads((tmp_path / "eval.json").read_text())["rows"][1]["model"] == "student"


def _batch(teacher, n=6):
    cfg = load_distill_config(None, ["data.max_sentences=50"])
    return SentenceFeed(cfg.data, teacher.tokenizer).eval_batches(n, 1)[0]


@pytest.mark.parametrize("losses", ["{v1: 1}", "{v2: 1}", "{embedding_mse: 1, qk: 1}"])
def test_a_copy_of_the_teacher_has_zero_loss(teacher, losses):
    cfg = load_distill_config(None, ["model.init=teacher", f"objective.losses={losses}"])
    student = build_student(cfg.model, teacher).eval()
    loss, metrics = DistillStep(teacher, student, cfg.objective.losses)(student, _batch(teacher))
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-5) and len(metrics) > 1


def test_gradients_reach_only_the_student_below_its_last_attention(teacher):
    cfg = load_distill_config(None, ["model.num_layers=2", "model.init=teacher_layers"])
    student = build_student(cfg.model, teacher)
    loss, _ = DistillStep(teacher, student, cfg.objective.losses)(student, _batch(teacher))
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    last = student.blocks[-1]
    for m in (last.attn.q_proj, last.attn.k_proj, last.attn.v_proj, student.blocks[0].mlp, student.embed):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    assert all(p.grad is None for p in [*last.mlp.parameters(), *last.attn.out_proj.parameters()])


def test_teacher_assistant_chain_in_one_call(tmp_path):
    cfg = load_distill_config(None, SMALL + [
        "model.num_layers=2", "model.dim=96", "model.num_heads=12", "objective.losses={v2: 1}",
        "objective.assistant={}", "objective.assistant_steps=2", "train.steps=2", f"train.run_dir={tmp_path / 'r'}"])
    result = distill(cfg, evaluate=False, progress=False)
    assistant = load_teacher(str(tmp_path / "r" / "assistant"))
    assert (assistant.cfg.num_layers, assistant.cfg.dim) == (6, 96)
    student = load_teacher(str(tmp_path / "r"))
    assert (student.cfg.num_layers, student.cfg.dim) == (2, 96) and result.step == 2
    stored = json.loads(json.dumps(__import__("yaml").safe_load((tmp_path / "r" / "config.yaml").read_text())))
    assert stored["teacher"]["path"] == str(tmp_path / "r" / "assistant")


def test_resume_refuses_an_edited_teacher(tmp_path, capsys):
    folder = tmp_path / "teacher"
    shutil.copytree(minilm_path(), folder)
    args = ["distill", f"teacher.path={folder}", "model.num_layers=1", "train.steps=2", "train.checkpoint_every=1",
            f"train.run_dir={tmp_path / 'r'}", "--no-eval", "--no-progress", *SMALL]
    assert main(args) == 0
    weights = load_file(folder / "model.safetensors")
    key = next(k for k in weights if k.endswith("query.weight"))
    weights[key] = weights[key] * 1.01
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    capsys.readouterr()
    assert main([*args, "train.steps=3", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot resume" in err and "is not the one checkpoint" in err and "restore that teacher" in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("overrides, message", [
    (["model.num_heads=6"], "need equal head counts.*v2 relations"),
    (["model.attention=linear", "model.attention_options={}"], "linear.* has none; use the v2 relations"),
    (["model.dim=100", "model.init=random"], "dim=100 is not divisible by num_heads=12"),
    (["objective.losses={atention: 1}"], "unknown loss 'atention'; did you mean \\['attention'\\]"),
    (["model.num_heads=7"], "dim=384 is not divisible by num_heads=7"),
    (["objective.losses={v2: 1}", "objective.relation_heads=5"], "relation_heads=5 does not divide"),
    (["data.dataset=/nonexistent/sentences.txt"], "neither an embedded sentence source .* nor an existing text file"),
    (["model.dim=192", "model.init=teacher_layers"], "initialising from the teacher needs its width"),
])
def test_bad_input_is_one_line(tmp_path, capsys, overrides, message):
    code = main(["distill", *overrides, f"train.run_dir={tmp_path / 'r'}", "train.steps=1", "--no-eval",
                 "--no-progress", "data.max_sentences=50"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    import re
    assert re.search(message, err), err


def test_empty_data_file_and_unsupported_teacher(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    assert main(["distill", f"data.dataset={empty}", f"train.run_dir={tmp_path / 'r'}", "--no-progress"]) == 2
    assert "is empty; give a file with text in it" in capsys.readouterr().err
    transformers = pytest.importorskip("transformers")
    gpt = tmp_path / "gpt"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64,
                                                         n_positions=32)).save_pretrained(gpt)
    assert main(["distill", f"teacher.path={gpt}", f"train.run_dir={tmp_path / 'r2'}", "--no-progress"]) == 2
    assert "must be a text encoder (BERT family)" in capsys.readouterr().err
    assert main(["distill", "teacher.path=/nonexistent", f"train.run_dir={tmp_path / 'r3'}", "--no-progress"]) == 2
    assert "is not a model folder" in capsys.readouterr().err


def test_an_mlm_run_of_attnlab_train_is_a_teacher(tmp_path, capsys):
    run = tmp_path / "mlm"
    assert main(["train", MLM_RECIPE, "model.dim=64", "model.num_layers=2", "train.steps=2",
                 "data.tokenizer=wordpiece", "data.vocab_size=300", "data.batch_size=4", "train.eval_batches=1",
                 f"train.run_dir={run}", "--no-progress"]) == 0
    args = ["distill", f"teacher.path={run}", "model.num_layers=1", "train.steps=2", "objective.losses={v2: 1}",
            f"train.run_dir={tmp_path / 'd'}", "--no-eval", "--no-progress", "data.max_sentences=60",
            "data.batch_size=8", "train.eval_batches=1"]
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr()
    assert json.loads((tmp_path / "d" / "summary.json").read_text())["step"] == 2
    assert "into a 1 x 64 student" in out.out  # the teacher run's architecture with one layer
    # a RoPE encoder is not a Hugging Face BERT: the student stays in its checkpoints, and says so
    assert "was not exported" in out.err and "its weights are in the run's checkpoints" in out.err
    byte_run = tmp_path / "byte"
    assert main(["train", MLM_RECIPE, "model.dim=32", "model.num_layers=1", "train.steps=1",
                 "data.batch_size=2", "train.eval_batches=1", f"train.run_dir={byte_run}", "--no-progress"]) == 0
    capsys.readouterr()
    assert main([*args[:1], f"teacher.path={byte_run}", *args[2:5], f"train.run_dir={tmp_path / 'd2'}",
                 *args[6:]]) == 2
    assert "data.tokenizer='byte'" in capsys.readouterr().err
