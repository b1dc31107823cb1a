"""`attnlab compare`: a 2x2x2 grid end to end, resuming after an interruption, the report, MQAR learnability."""

from __future__ import annotations

import csv
import json

import pytest

from attnlab.compare.config import compare_config_from_dict
from attnlab.compare.grid import append_result, read_results, run_grid
from attnlab.compare.report import publish, write_report
from attnlab.data import get_dataset
from attnlab.train.feeds import LMDatasetFeed, SplitSampler

MQAR = {"vocab_size": 32, "seq_len": 32, "num_kv_pairs": 4, "num_train": 256, "num_test": 64}


def grid_config(out_dir, text_file) -> dict:
    return {"compare": {"out_dir": str(out_dir), "seeds": [0, 1], "inference_batches": 2,
                        "variants": [{"name": "softmax"}, {"name": "sliding_window", "options": {"window": 4},
                                                           "label": "sw4"}],
                        "tasks": [{"name": "char_lm"}, {"name": "mqar", "options": MQAR}]},
            "base": {"model": {"name": "gpt-tiny", "dim": 32, "num_layers": 1},
                     "data": {"dataset": str(text_file), "seq_len": 32, "batch_size": 4},
                     "train": {"steps": 3, "warmup_steps": 1, "eval_every": 3, "eval_batches": 2, "precision": "fp32",
                               "device": "cpu"}}}


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text("In the beginning God created the heaven and the earth. " * 40, encoding="utf-8")
    return p


def _table(run_dir) -> list[dict]:
    with open(run_dir / "results.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _comparable(records: list[dict]) -> list[dict]:
    """Records without wall-clock measurements (speed and memory differ between runs)."""
    drop = {"train_seconds", "train_tokens_per_s", "infer_tokens_per_s", "peak_memory_mb", "rss_start_mb",
            "peak_rss_delta_mb"}
    return [{k: v for k, v in r.items() if k not in drop} for r in records]


def test_grid_runs_resumes_and_reports(tmp_path, text_file):
    # uninterrupted reference run
    full = compare_config_from_dict(grid_config(tmp_path / "full", text_file))
    ref = run_grid(full, progress=False)
    assert [r["key"] for r in ref] == [f"{t}/{v}/seed{s}" for t in ("char_lm", "mqar") for v in ("softmax", "sw4")
                                       for s in (0, 1)]
    for r in ref:
        assert r["steps"] == 3 and len(r["losses"]) == 3 and r["train_tokens"] == 3 * 4 * 32
        assert r["parameters"] > 0 and r["train_tokens_per_s"] > 0 and r["infer_tokens_per_s"] > 0
    assert {r["metric"] for r in ref} == {"bits_per_char", "accuracy"}
    assert all(0.0 <= r["quality"] <= 1.0 for r in ref if r["metric"] == "accuracy")

    # interrupted run: one cell, then the rest; the finished cell must not be retrained
    out = tmp_path / "resumed"
    part = compare_config_from_dict(grid_config(out, text_file))
    first = run_grid(part, progress=False, max_cells=1, report=False)
    assert len(first) == 1
    trained: list[str] = []
    rest = run_grid(part, progress=False, on_cell=lambda rec: trained.append(rec["key"]))
    assert first[0]["key"] not in trained and len(trained) == 7
    assert rest[0] == first[0]  # the stored record, not a retrained one
    assert _comparable(rest) == _comparable(ref)
    assert len(read_results(out / "results.jsonl")) == 8
    # a third invocation trains nothing
    again: list[str] = []
    run_grid(part, progress=False, on_cell=lambda rec: again.append(rec["key"]))
    assert again == []

    # the report: one row per (task, variant), identical quality columns to the uninterrupted run
    rows, ref_rows = _table(out), _table(tmp_path / "full")
    assert [(r["task"], r["variant"], r["seeds"]) for r in rows] == [
        ("char_lm", "softmax", "2"), ("char_lm", "sw4", "2"), ("mqar", "softmax", "2"), ("mqar", "sw4", "2")]
    assert [(r["quality_mean"], r["quality_std"]) for r in rows] == [(r["quality_mean"], r["quality_std"])
                                                                     for r in ref_rows]
    md = write_report(out)
    assert md.count("| softmax |") == 3 and md.count("| sw4 |") == 3  # overview + one table per task
    assert md.index("### Overview") < md.index("### char_lm") < md.index("### mqar")
    assert (out / "quality_vs_throughput.png").stat().st_size > 0 and (out / "loss_curves.png").stat().st_size > 0

    # `make results`: the tables go between markers of a doc; republishing replaces them, keeps the rest
    doc = tmp_path / "results_doc.md"
    doc.write_text("# Results\n\nintro text\n", encoding="utf-8")
    publish(out, doc)
    publish(out, doc)
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("# Results\n\nintro text\n") and text.count("<!-- results:start -->") == 1
    assert "8 finished cells" in text and text.count("| softmax |") == 3
    # a named section: a second grid in the same document, next to the main one, replaced on its own
    publish(out, doc, section="vision")
    publish(out, doc, section="vision")
    text = doc.read_text(encoding="utf-8")
    assert text.count("<!-- results:start -->") == 1 and text.count("<!-- results:vision:start -->") == 1
    assert text.count("## Latest grid: vision") == 1 and text.count("| softmax |") == 6
    with pytest.raises(ValueError, match="section name 'a b'"):
        publish(out, doc, section="a b")


def test_parallel_workers_give_the_sequential_results(tmp_path, text_file):
    """compare.workers=2 trains cells in two spawned processes; records (minus timings) and their order in
    the returned list equal a sequential run's, and results.jsonl holds every cell once."""
    raw = grid_config(tmp_path / "seq", text_file)
    raw["compare"]["tasks"] = [{"name": "mqar", "options": MQAR}]
    raw["compare"]["seeds"] = [0]
    seq = run_grid(compare_config_from_dict(raw), progress=False, report=False)
    raw["compare"]["out_dir"], raw["compare"]["workers"] = str(tmp_path / "par"), 2
    par = run_grid(compare_config_from_dict(raw), progress=False, report=False)
    assert [r["key"] for r in par] == ["mqar/softmax/seed0", "mqar/sw4/seed0"]
    assert _comparable(par) == _comparable(seq)
    assert sorted(r["key"] for r in read_results(tmp_path / "par" / "results.jsonl")) == [r["key"] for r in par]


def test_changed_settings_are_not_mixed_into_old_results(tmp_path, text_file):
    raw = grid_config(tmp_path / "g", text_file)
    raw["compare"]["tasks"] = [{"name": "mqar", "options": MQAR}]
    raw["compare"]["variants"], raw["compare"]["seeds"] = [{"name": "softmax"}], [0]
    run_grid(compare_config_from_dict(raw), progress=False, report=False)
    raw["base"]["train"]["steps"] = 4
    with pytest.raises(ValueError, match="different settings"):
        run_grid(compare_config_from_dict(raw), progress=False, report=False)


def test_torn_last_line_is_ignored_and_repaired(tmp_path):
    path = tmp_path / "results.jsonl"
    append_result(path, {"key": "a"})
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"key": "b", "qual')  # a crash in the middle of an append
    assert [r["key"] for r in read_results(path)] == ["a"]
    append_result(path, {"key": "c"})
    assert [r["key"] for r in read_results(path)] == ["a", "c"]
    assert path.read_text().count("\n") == 2


def test_config_errors_name_the_problem(tmp_path, text_file):
    raw = grid_config(tmp_path, text_file)
    raw["compare"]["variants"].append({"name": "softmax"})
    with pytest.raises(ValueError, match="duplicate variant label"):
        compare_config_from_dict(raw)
    raw = grid_config(tmp_path, text_file)
    raw["compare"]["tasks"][0]["name"] = "mqarr"
    with pytest.raises(ValueError, match="unknown task 'mqarr'"):
        compare_config_from_dict(raw)
    raw = grid_config(tmp_path, text_file)
    raw["base"]["train"]["stepz"] = 3
    with pytest.raises(ValueError, match="train.stepz"):
        compare_config_from_dict(raw)


def test_every_task_and_variant_is_checked_before_any_cell_runs(tmp_path, text_file):
    """A typo in the last task's overrides, in a variant's options or in a key of the compare section is an error
    when the file is read, naming where it is (and the closest key), not after the cells before it have trained."""
    raw = grid_config(tmp_path, text_file)
    raw["compare"]["tasks"][-1]["overrides"] = {"model": {"windw_size": 4}}
    with pytest.raises(ValueError, match=f"the overrides of task '{raw['compare']['tasks'][-1]['name']}': unknown "
                                         "config key 'model.windw_size'. Did you mean model.window_size"):
        compare_config_from_dict(raw)
    raw = grid_config(tmp_path, text_file)
    raw["compare"]["variants"].append({"name": "sliding_window", "options": {"windo": 4}, "label": "sw"})
    with pytest.raises(ValueError, match=r"variant 'sw': attention 'sliding_window' has no option\(s\) \['windo'\]"):
        compare_config_from_dict(raw)
    raw = grid_config(tmp_path, text_file)
    raw["compare"]["tasks"][-1]["options"] = {**MQAR, "num_kv_pair": 4}
    with pytest.raises(ValueError, match=r"task 'mqar': unknown option\(s\) \['num_kv_pair'\] for dataset 'mqar'. "
                                         r"Did you mean \['num_kv_pairs'\]"):
        compare_config_from_dict(raw)
    # a task's recipe is checked as its cells build it, with a variant's kernel in place of the task's own: a
    # schedule that does not fit the base model alone (2 entries, 1 layer) is no error, as each cell replaces it
    raw = grid_config(tmp_path, text_file)
    raw["compare"]["tasks"][0]["overrides"] = {"model": {"attention": ["softmax", "softmax"]}}
    assert compare_config_from_dict(raw).compare.tasks[0].label == "char_lm"
    raw = grid_config(tmp_path, text_file)
    raw["compare"]["seedz"] = [0]
    with pytest.raises(ValueError, match=r"compare.seedz: Extra inputs are not permitted \(did you mean \['seeds'\]"):
        compare_config_from_dict(raw)
    raw = grid_config(tmp_path, text_file)
    raw["compare"]["variants"][0]["name"] = "neighbourhood"
    with pytest.raises(ValueError, match=r"variants.0.name: unknown attention 'neighbourhood'. Did you mean "):
        compare_config_from_dict(raw)


def test_task_sampler_resumes_the_same_stream():
    task = get_dataset("mqar", **MQAR)
    a = SplitSampler(task.train, batch_size=4, seed=3)
    first = [a.next()["idx"] for _ in range(5)]
    b = SplitSampler(task.train, batch_size=4, seed=3)
    b.load_state_dict({**a.state_dict(), "position": 2})
    assert all((b.next()["idx"] == x).all() for x in first[2:])
    with pytest.raises(ValueError, match="rows"):
        SplitSampler(task.train.subset(slice(0, 10)), 4, 3).load_state_dict(a.state_dict())


@pytest.mark.slow
def test_softmax_transformer_learns_mqar(tmp_path):
    """Zoology MQAR, vocab 32, 32 tokens, 4 pairs: gpt-tiny with the trainer's default recipe (lr 1e-3, warmup
    100, weight decay 0.1, cosine over 2000 steps, batch 64) reaches >= 95% query accuracy. Measured: 100% test
    accuracy; validation loss sits at ln 4 (the value set, not the binding) until step ~800 and drops at ~900-1300.
    With weight_decay=0 (lr 1e-3 for 1000 steps, or a constant 3e-3 for 1500) it stayed at ~25%. ~10 min loaded CPU."""
    raw = {"compare": {"out_dir": str(tmp_path), "seeds": [0], "variants": [{"name": "softmax"}],
                       "tasks": [{"name": "mqar", "options": {"vocab_size": 32, "seq_len": 32, "num_kv_pairs": 4}}]},
           "base": {"model": {"name": "gpt-tiny"}, "data": {"batch_size": 64},
                    "train": {"steps": 2000, "eval_every": 500, "precision": "fp32", "device": "cpu"}}}
    [rec] = run_grid(compare_config_from_dict(raw), progress=False, report=False)
    assert rec["metric"] == "accuracy" and rec["quality"] >= 0.95, json.dumps({k: rec[k] for k in ("quality", "losses")})


def test_task_data_rejects_non_lm_tasks():
    listops = get_dataset("listops", num_train=8, num_test=4)
    with pytest.raises(ValueError, match="kind 'classify'"):
        LMDatasetFeed(listops)


def test_eval_batches_stop_at_the_end_of_the_test_split():
    data = LMDatasetFeed(get_dataset("mqar", **MQAR))  # 64 test rows
    batches = data.eval_batches(batch_size=24, num_batches=20)
    assert [len(b["idx"]) for b in batches] == [24, 24, 16]
    assert (batches[0]["idx"] == data.dataset.test.inputs[:24]).all()


def test_char_lm_cell_trains_exactly_like_attnlab_train(tmp_path, text_file):
    """The grid's shared-corpus path gives the same losses as `train(cfg)` on the cell's own recipe."""
    from attnlab.train.trainer import train

    raw = grid_config(tmp_path / "g", text_file)
    raw["compare"]["tasks"], raw["compare"]["seeds"] = [{"name": "char_lm"}], [1]
    raw["compare"]["variants"] = [{"name": "sliding_window", "options": {"window": 4}}]
    cfg = compare_config_from_dict(raw)
    [rec] = run_grid(cfg, progress=False, report=False)
    plain = cfg.cells()[0].run_config()
    plain.train.run_dir = str(tmp_path / "plain")
    result = train(plain, progress=False)
    assert rec["losses"] == [round(x, 5) for x in result.losses]
    assert rec["final_val_loss"] == result.final_val_loss
