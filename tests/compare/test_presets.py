"""The shipped compare presets (configs/compare/*.yaml) load, and full.yaml really is the full grid."""
from pathlib import Path

import pytest

from attnlab.attention import list_attention
from attnlab.compare.config import load_compare_config
from attnlab.data import list_datasets
from attnlab.data.registry import DATASETS

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "compare"


@pytest.mark.parametrize("path", sorted(PRESETS.glob("*.yaml")), ids=lambda p: p.name)
def test_preset_loads_with_unique_cells(path):
    cfg = load_compare_config(path)
    labels = [v.label or v.name for v in cfg.compare.variants]
    tasks = [t.label or t.name for t in cfg.compare.tasks]
    assert len(labels) == len(set(labels)), f"{path.name}: duplicate variant labels {labels}"
    assert len(tasks) == len(set(tasks)), f"{path.name}: duplicate task labels {tasks}"
    assert cfg.compare.workers * (cfg.compare.threads or 1) <= 2, "presets are sized for 2 cores"


def test_full_preset_covers_every_kernel_and_task_with_three_seeds():
    cfg = load_compare_config(PRESETS / "full.yaml")
    assert sorted({v.name for v in cfg.compare.variants}) == sorted(list_attention())
    # encoder-decoders train with `attnlab train`; image datasets need a vision model (the vision grid's tasks),
    # spectrograms and files an audio or bytes model (the audio grid's)
    grid_tasks = [n for n in list_datasets() if DATASETS.get(n).kind != "seq2seq" and DATASETS.get(n).source != "digits"
                  and n not in ("fashion_images", "image_folder", "keywords", "audio_folder", "keyword_bytes",
                                "file_types")]
    assert sorted({t.name for t in cfg.compare.tasks}) == sorted(["char_lm", *grid_tasks])
    assert len(cfg.compare.seeds) == 3


def test_quick_preset_is_the_issue_grid():
    cfg = load_compare_config(PRESETS / "quick.yaml")
    names = {v.name for v in cfg.compare.variants}
    assert {"softmax", "sliding_window"} <= names and names & {"linear", "neighborhood"}
    assert [t.name for t in cfg.compare.tasks] == ["char_lm", "mqar"] and len(cfg.compare.seeds) == 2
