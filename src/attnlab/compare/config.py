"""The configuration of an ``attnlab compare`` grid: variants x tasks x seeds over one base recipe.

A compare file (``configs/compare/quick.yaml``) has two sections::

    compare:
      out_dir: runs/compare-quick
      seeds: [0, 1]
      variants:                      # attention kernels (`attnlab list attention`)
        - {name: softmax}
        - {name: sliding_window, options: {window: 16}, label: sliding_window-16}
      tasks:                         # char_lm = the text corpus of base.data; others: a suite dataset
        - {name: char_lm}
        - {name: mqar, options: {vocab_size: 32, seq_len: 32, num_kv_pairs: 4}, overrides: {train: {steps: 800}}}
        - {name: listops, options: {max_length: 64}}   # kind classify: the base model under a SequenceClassifier
    base:                            # a RunConfig recipe (model / data / objective / train) shared by every cell
      model: {name: gpt-tiny}
      train: {steps: 300, lr: 1e-3}

Every cell of a task gets the same base recipe plus that task's ``overrides`` (the same budget for every
variant and seed); only ``model.attention``/``model.attention_options`` (the variant) and ``train.seed``
(the seed) differ. A task's dataset is fixed per task (its ``seed`` option, default 0), so the
spread over seeds is the spread of initialisation and batch order.

A task is one entry of the grid: a dataset (``name``: ``char_lm`` or a name of :func:`attnlab.data.get_dataset`),
its ``options``, budget ``overrides`` and a ``label``. A series task (``name``: an embedded series or a ``.csv``
file) trains with ``objective.name: forecast``, its ``options`` being data keys (``lookback``, ``horizon``,
``target``, ...), and is scored by the test MSE next to the closed-form baselines.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..config import RunConfig, build_config, deep_merge, parse_overrides, rename_old_sections
from ..core.yamlfile import load_yaml

CHAR_LM = "char_lm"  # the text-corpus task: base.data's corpus, scored in bits per character


class VariantSpec(BaseModel):
    """One attention variant: registry ``name``, kernel ``options`` and a unique ``label`` (default: name)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    options: dict = Field(default_factory=dict)
    label: str = ""

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from ..attention import list_attention
        from ..attention.registry import unknown_attention_message

        if v not in list_attention():
            raise ValueError(unknown_attention_message(v))
        return v

    @model_validator(mode="after")
    def _default_label(self) -> "VariantSpec":
        if not self.label:
            self.label = self.name
        return self


class TaskSpec(BaseModel):
    """One task of the grid: a dataset (``char_lm`` or a name of :func:`attnlab.data.get_dataset`), its
    generator ``options``, recipe ``overrides`` (nested dict merged into ``base`` for this task) and a ``label``."""

    model_config = ConfigDict(extra="forbid")

    name: str
    options: dict = Field(default_factory=dict)
    overrides: dict = Field(default_factory=dict)
    label: str = ""

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from ..data.registry import DATASETS, list_datasets
        from ..data.series import is_series

        if is_series(v):  # a series (embedded or CSV): the cells train with objective forecast
            return v
        valid = [CHAR_LM, *(n for n in list_datasets() if DATASETS.get(n).kind != "seq2seq")]
        if v in list_datasets() and v not in valid:
            raise ValueError(f"task {v!r} is a seq2seq dataset: the grid trains one body for every task, and an "
                             f"encoder-decoder is trained with `attnlab train` (objective.name: seq2seq); grid tasks: "
                             f"{valid}")
        if v not in valid:
            from ..data.series import EMBEDDED_SERIES

            raise ValueError(f"unknown task {v!r}; valid tasks: {valid}, a series {sorted(EMBEDDED_SERIES)} or a .csv "
                             "file")
        return v

    @model_validator(mode="after")
    def _default_label(self) -> "TaskSpec":
        if not self.label:
            self.label = self.name
        return self


class CompareSection(BaseModel):
    """Where the grid is written and what it spans."""

    model_config = ConfigDict(extra="forbid")

    out_dir: str = Field("runs/compare", description="results.jsonl, tables, plots and per-cell run dirs")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="train.seed of each repeat")
    variants: list[VariantSpec] = Field(min_length=1)
    tasks: list[TaskSpec] = Field(min_length=1)
    inference_batches: int = Field(8, ge=1, description="eval batches timed for inference tokens/s")
    keep_checkpoints: bool = Field(False, description="keep each cell's final checkpoint (off: deleted after scoring)")
    workers: int = Field(1, ge=1, description="cells trained side by side, each in its own process with `threads` "
                         "threads (2 workers x 1 thread fill a 2-core machine; every cell then shares the machine "
                         "the same way, so timings stay comparable within the grid)")
    threads: int | None = Field(1, ge=1, description="torch intra-op threads for every cell (fixed so timings are "
                                "comparable; on a shared 2-core machine 1 thread ran gpt-tiny ~10x faster than 2); "
                                "None = leave torch's setting")

    @model_validator(mode="after")
    def _unique_labels(self) -> "CompareSection":
        for what, items in (("variant", self.variants), ("task", self.tasks)):
            labels = [i.label for i in items]
            dup = sorted({x for x in labels if labels.count(x) > 1})
            if dup:
                raise ValueError(f"duplicate {what} label(s) {dup}; give each entry a distinct `label:`")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds {self.seeds} repeat a value; list each seed once")
        return self


class CompareConfig(BaseModel):
    """A whole compare file: the ``compare`` grid and the ``base`` recipe (a :class:`RunConfig` dict)."""

    model_config = ConfigDict(extra="forbid")

    compare: CompareSection
    base: dict = Field(default_factory=dict)

    def cells(self) -> list["Cell"]:
        """Every cell in run order (task, then variant, then seed)."""
        return [Cell(self, t, v, s) for t in self.compare.tasks for v in self.compare.variants for s in self.compare.seeds]


class Cell:
    """One (task, variant, seed) of the grid; :meth:`run_config` is its full recipe."""

    def __init__(self, cfg: CompareConfig, task: TaskSpec, variant: VariantSpec, seed: int):
        self.cfg, self.task, self.variant, self.seed = cfg, task, variant, seed

    @property
    def key(self) -> str:
        """Stable identity in ``results.jsonl``: ``task/variant/seed`` labels."""
        return f"{self.task.label}/{self.variant.label}/seed{self.seed}"

    def run_config(self, seq_len: int | None = None, vocab_size: int | None = None,
                   max_seq_len: int | None = None, extra: dict | None = None) -> RunConfig:
        """The recipe of this cell (``seq_len``/``vocab_size`` from the task's suite dataset; ``max_seq_len``, when
        given, sizes the model to it: classify/regression datasets set it to their own sequence length; ``extra``: a
        nested dict merged before the variant, e.g. a series task's data keys and ``objective.name: forecast``).

        Raises:
            ValueError: the merged recipe is invalid (the message names the key).
        """
        raw = deep_merge(rename_old_sections(self.cfg.base, "base"),
                         rename_old_sections(self.task.overrides, f"the overrides of task {self.task.label!r}"))
        model = {"attention": self.variant.name, "attention_options": self.variant.options}
        if vocab_size is not None:
            model["vocab_size"] = vocab_size
        if max_seq_len is not None:
            model["max_seq_len"] = max_seq_len
        train = {"seed": self.seed, "run_dir": str(Path(self.cfg.compare.out_dir) / "cells" / self.key.replace("/", "__"))}
        data = {} if seq_len is None else {"seq_len": seq_len, "dataset": self.task.name}
        raw = deep_merge(deep_merge(raw, extra or {}), {"model": model, "train": train, "data": data})
        return build_config(raw)

    def fingerprint(self) -> str:
        """Hash of everything that determines the cell's result (recipe, task options); changes invalidate it.
        The recipe is hashed as written (an old ``task`` section is not renamed), so earlier results still match."""
        blob = json.dumps({"base": deep_merge(self.cfg.base, self.task.overrides), "task": self.task.model_dump(),
                           "variant": self.variant.model_dump(), "seed": self.seed}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_compare_config(path: str | Path, overrides: list[str] | None = None) -> CompareConfig:
    """Read a compare YAML file and apply dotted overrides (``compare.out_dir=runs/x``, ``base.train.steps=50``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: bad YAML, unknown keys, unknown attention/task names, or a base recipe that does not validate.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"compare config {str(p)!r} not found; see configs/compare/quick.yaml")
    raw = load_yaml(p, "a mapping with sections 'compare' and 'base'")
    return compare_config_from_dict(deep_merge(raw, parse_overrides(overrides or [])), source=str(p))


def compare_config_from_dict(raw: dict[str, Any], source: str = "compare config") -> CompareConfig:
    """Validate a nested dict (see module docstring); raises ``ValueError`` with readable messages."""
    try:
        cfg = CompareConfig.model_validate(raw)
    except ValidationError as e:
        lines = [f"{'.'.join(map(str, err['loc']))}: {err['msg'].removeprefix('Value error, ')}{_did_you_mean(err)}"
                 for err in e.errors()]
        raise ValueError(f"invalid {source}:\n  " + "\n  ".join(lines)) from None
    build_config(deep_merge(cfg.base, {}))  # the base recipe alone must validate (names the bad key)
    _check_cells(cfg)
    return cfg


def _check_cells(cfg: CompareConfig) -> None:
    """Every task's recipe and every variant's options, checked before the first cell trains (a typo in the last
    task's overrides would otherwise show only after the cells before it have run).

    Raises:
        ValueError: naming the task or variant and the bad key.
    """
    from ..attention.registry import attention_options

    for v in cfg.compare.variants:
        unknown = sorted(set(v.options) - set(attention_options(v.name)))
        if unknown:
            raise ValueError(f"variant {v.label!r}: attention {v.name!r} has no option(s) {unknown}; valid: "
                             f"{sorted(attention_options(v.name))}")
    from ..data.registry import dataset_options, list_datasets, unknown_options_message

    for t in cfg.compare.tasks:  # a suite dataset's generator options (a series task's are data keys)
        unknown = sorted(set(t.options) - set(dataset_options(t.name))) if t.name in list_datasets() else []
        if unknown:
            raise ValueError(f"task {t.label!r}: " + unknown_options_message(t.name, unknown))
    base = rename_old_sections(cfg.base, "base")
    for t in cfg.compare.tasks:
        where = f"the overrides of task {t.label!r}"
        recipe = deep_merge(base, rename_old_sections(t.overrides, where))
        errors = []
        for v in cfg.compare.variants:  # as a cell builds it; one variant that fits is enough (others are skipped)
            try:
                build_config(deep_merge(recipe, {"model": {"attention": v.name, "attention_options": v.options}}))
                break
            except ValueError as e:
                errors.append(e)
        else:
            raise ValueError(f"{where}: {errors[0]}") from None


def _did_you_mean(err: dict) -> str:
    """`` (did you mean [...]?)`` for a misspelt key of the compare file, from the fields where it sits."""
    if err.get("type") != "extra_forbidden":
        return ""
    import difflib
    import typing

    model: type[BaseModel] = CompareConfig
    for part in err["loc"][:-1]:
        if isinstance(part, int):
            continue
        hint = model.model_fields[part].annotation
        inner = [a for a in (hint, *typing.get_args(hint)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not inner:
            return ""
        model = inner[0]
    close = difflib.get_close_matches(str(err["loc"][-1]), list(model.model_fields), n=2, cutoff=0.5)
    return f" (did you mean {close}?)" if close else f" (valid: {sorted(model.model_fields)})"
