"""The report's cross-task overview: per-task quality, best in bold, mean ranks, speed relative to softmax."""
from __future__ import annotations

import math

from attnlab.compare.report import overview_table, summarize


def _record(task, variant, quality, tok_s, seed=0, higher=True, metric="accuracy"):
    return {"task": task, "variant": variant, "attention": variant, "metric": metric, "quality": quality,
            "seed": seed, "final_val_loss": 1.0, "train_tokens_per_s": tok_s, "infer_tokens_per_s": 2 * tok_s,
            "peak_memory_mb": 100.0, "parameters": 10, "steps": 5, "train_tokens": 50, "higher_is_better": higher}


def _rows():
    recs = [
        # lm: lower is better; linear best, softmax second, axial did not run
        _record("lm", "softmax", 2.0, 100.0, higher=False, metric="bits_per_char"),
        _record("lm", "linear", 1.5, 50.0, higher=False, metric="bits_per_char"),
        _record("lm", "linear", 1.7, 50.0, seed=1, higher=False, metric="bits_per_char"),  # mean 1.6
        # recall: higher is better; softmax best, linear and axial tied
        _record("recall", "softmax", 1.0, 200.0),
        _record("recall", "linear", 0.25, 400.0),
        _record("recall", "axial", 0.25, 50.0),
    ]
    return summarize(recs)


def test_overview_ranks_bolds_and_speeds():
    md = overview_table(_rows())
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert lines[0] == ("| variant | lm bits_per_char ↓ | recall accuracy ↑ | mean rank | tasks | "
                        "train speed vs softmax |")
    body = {line.split(" | ")[0][2:]: line for line in lines[1:]}
    assert list(body) == ["softmax", "linear", "axial"]  # all-task variants by mean rank, then partial ones
    assert body["softmax"] == "| softmax | 2.000 | **1.000** | 1.5 | 2 | 1.00x |"
    # linear: rank 1 on lm (1.6 < 2.0), rank 2 on recall; speed = sqrt(50/100 * 400/200) = 1.00
    assert body["linear"] == f"| linear | **1.600** | 0.250 | 1.5 | 2 | {math.sqrt(0.5 * 2.0):.2f}x |"
    assert body["axial"] == "| axial |  | 0.250 | 2.0 | 1 | 0.25x |"  # tied with linear: shares rank 2


def test_overview_is_empty_for_a_single_task():
    rows = [r for r in _rows() if r["task"] == "lm"]
    assert overview_table(rows) == ""
