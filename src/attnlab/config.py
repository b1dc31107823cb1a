"""Typed run configuration: ``model`` / ``data`` / ``objective`` / ``train`` sections.

A recipe is a YAML file with those four sections; dotted ``key=value`` overrides change single values
(``model.attention=softmax train.lr=3e-4 data.seq_len=128``). Values are parsed as YAML scalars, lists
or mappings. Unknown keys are errors naming the closest valid keys; values of the wrong type are
errors naming the expected type. ``python -m attnlab.config_reference docs/config.md`` regenerates the
reference page from these models.

Older recipes and run directories name the ``objective`` section ``task``; a ``task`` section (in a file,
a saved ``config.yaml`` or a ``task.name=...`` override) is read as ``objective`` (see :func:`rename_old_sections`).
"""

from __future__ import annotations

import difflib
import os
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .core.io import write_text
from .core.yamlfile import load_yaml
from .models.config import ModelConfig

SECTIONS = ("model", "data", "objective", "train")
OLD_SECTION_NAMES = {"task": "objective"}  # old name -> current name, still read in files and overrides
# train keys that may change when a run resumes: everything else must match what its checkpoint was trained with
RESUMABLE_CHANGES = frozenset({"steps", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints",
                               "early_stopping_patience", "device", "run_dir"})
# keys a resume accepts a new value for when train.allow_changes names them (the value applies from the resumed step)
CHANGES_ON_REQUEST = ("train.lr", "train.min_lr_ratio", "train.warmup_steps", "train.weight_decay", "train.beta1",
                      "train.beta2", "train.grad_clip", "train.precision", "train.retain_memory", "model.dropout")


class ModelSection(ModelConfig):
    """:class:`attnlab.models.ModelConfig` plus the preset ``name`` it starts from.

    Values given in the recipe override the preset's; the rest come from the preset, then from
    ``ModelConfig``'s defaults. ``vocab_size`` comes from the dataset's tokenizer unless set.
    """

    name: str = Field("gpt-char-small", description="model preset (`attnlab list models`)")
    vocab_size: int | None = Field(None, ge=1, description="token vocabulary size; None = from the dataset")
    init_from: str | None = Field(
        None, description="a run folder (`attnlab train`) whose newest checkpoint initialises this model: every tensor "
                          "of the same name and shape (e.g. an mlm-pretrained encoder under a new classification head)")

    @model_validator(mode="before")
    @classmethod
    def _merge_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        from .models.registry import model_config

        name = data.get("name", cls.model_fields["name"].default)
        if not isinstance(name, str):
            return data  # the field validator reports the type error
        preset = model_config(name).model_dump(exclude_unset=True)  # raises for an unknown preset
        preset.pop("vocab_size", None)
        return {**preset, **data}

    def to_model_config(self, vocab_size: int | None = None) -> ModelConfig:
        """The plain :class:`ModelConfig`; ``vocab_size`` (from the tokenizer) fills an unset vocabulary.

        Raises:
            ValueError: the configured ``vocab_size`` is smaller than the tokenizer's.
        """
        values = self.model_dump(exclude={"name", "vocab_size", "init_from"})
        if self.vocab_size is not None and vocab_size is not None and self.vocab_size < vocab_size:
            raise ValueError(
                f"model.vocab_size={self.vocab_size} is smaller than the dataset's vocabulary ({vocab_size}); "
                "remove model.vocab_size to take it from the dataset"
            )
        vocab = self.vocab_size if self.vocab_size is not None else vocab_size
        if vocab is None:
            raise ValueError("model.vocab_size is unset and no tokenizer vocabulary was given")
        return ModelConfig(vocab_size=vocab, **values)


class DataConfig(BaseModel):
    """Where the tokens come from and how batches are cut."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    dataset: str = Field("kjv", description="embedded dataset name (`attnlab list datasets`) or a text file path")
    tokenizer: str = Field(
        "char", description="char: vocabulary = the characters present; byte: UTF-8 bytes, vocabulary 256; "
                            "bpe | wordpiece | unigram | word: trained on the training split with at most "
                            "data.vocab_size ids (word: one id per whitespace-separated word, e.g. event codes); "
                            "or the path of an existing tokenizer.json")
    vocab_size: int = Field(8000, ge=2, description="vocabulary size of a trained tokenizer (bpe, wordpiece, "
                                                    "unigram, word)")
    batch_size: int = Field(32, ge=1, description="sequences per micro-batch per process")
    seq_len: int = Field(256, ge=1, description="tokens per training window")
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="share of the text held out for validation")
    options: dict[str, Any] = Field({}, description="options of a suite dataset named by data.dataset "
                                                    "(`attnlab list datasets`), e.g. {max_len: 8}")
    split: Literal["interleaved", "tail"] = Field(
        "interleaved",
        description="interleaved: every k-th of 100 equal chunks is validation (covers the whole text); "
                    "tail: the last val_fraction of the text",
    )

    timestamp: str | None = Field(None, description="forecast: the time column of a CSV series (ISO date/time or "
                                                    "integer steps)")
    target: list[str] = Field([], description="forecast: columns to forecast; [] = the embedded series' default")
    exogenous: list[str] | None = Field(None, description="forecast: input-only columns (covariates); None = the "
                                                          "embedded series' default, [] = none")
    calendar: list[Literal["hour", "weekday", "month", "dayofyear"]] = Field(
        [], description="forecast: calendar features added as exogenous sin/cos columns (dated series only)")
    lookback: int = Field(96, ge=1, description="forecast: look-back window in time steps")
    horizon: int = Field(24, ge=1, description="forecast: steps forecast")
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="forecast: last share of the rows held out for "
                                                                  "testing (validation: data.val_fraction before it)")
    fill: Literal["error", "linear", "previous"] = Field(
        "error", description="forecast: missing steps or values in a CSV series: error (refuse, naming the first), "
                             "linear (interpolate in time), previous (carry the last value forward)")

    @field_validator("tokenizer")
    @classmethod
    def _known_tokenizer(cls, v: str) -> str:
        from .data.text.subword import SUBWORD_KINDS

        kinds = ["char", "byte", *SUBWORD_KINDS]
        if v in kinds or Path(v).is_file():
            return v
        close = difflib.get_close_matches(v, kinds, n=2)
        raise ValueError(f"unknown tokenizer {v!r}" + (f"; did you mean {close}?" if close else "")
                         + f" Valid: {kinds} or the path of an existing tokenizer.json")

class ObjectiveConfig(BaseModel):
    """What the model is trained to do (`attnlab list objectives`)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = Field("lm", description="objective (training step function): lm = next-token language modelling, "
                                        "mlm = masked tokens (encoders), seq2seq = teacher forcing (encoder-decoders "
                                        "on a seq2seq dataset), forecast = series forecasting (a series preset on an "
                                        "embedded series or a CSV file), patch_mask = PatchTST's masked-patch "
                                        "pretraining on the same windows, irregular = the irregular-series classifier "
                                        "on the synthetic task, ssast = SSAST's masked spectrogram patches (an ssast "
                                        "preset on keywords or audio_folder); `attnlab list objectives`")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="seq2seq, mlm and classify: share of the "
                                                                     "target probability spread over the vocabulary "
                                                                     "or the classes")
    mask_prob: float = Field(0.15, gt=0.0, le=1.0, description="mlm: share of tokens (or words) picked; 80% "
                                                                "become [MASK], 10% a random token, 10% stay")
    whole_word: bool = Field(False, description="mlm: pick whole words (all pieces of a word together)")

    @field_validator("name")
    @classmethod
    def _known_objective(cls, v: str) -> str:
        from .objectives import get_objective

        get_objective(v)  # raises for an unknown name, suggesting the closest
        return v


class TrainConfig(BaseModel):
    """Optimisation, evaluation, checkpointing and where the run is written."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    steps: int = Field(2000, ge=1, description="optimizer steps in the whole run")
    lr: float = Field(1e-3, gt=0.0, description="peak learning rate (AdamW)")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="cosine decays to lr * min_lr_ratio")
    warmup_steps: int = Field(100, ge=0, description="linear warmup from 0 to lr")
    weight_decay: float = Field(0.1, ge=0.0, description="AdamW decay on matrices (not norms, biases, embeddings)")
    beta1: float = Field(0.9, ge=0.0, lt=1.0, description="AdamW beta1")
    beta2: float = Field(0.99, ge=0.0, lt=1.0, description="AdamW beta2")
    grad_clip: float | None = Field(1.0, gt=0.0, description="clip the global gradient norm; None = off")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto = bf16 autocast where the hardware has fast bf16 (AVX512-BF16/AMX, CUDA), else fp32")
    device: str = Field("auto", description="auto = cuda if available, else cpu; or any torch device string")
    retain_memory: bool = Field(
        True, description="on CPU, keep memory freed at the end of a step for the next (glibc malloc thresholds) "
                          "instead of page-faulting it back every step; the process keeps its peak heap")
    eval_every: int = Field(250, ge=1, description="evaluate every N steps (and at the end)")
    eval_batches: int = Field(20, ge=1, description="validation batches per evaluation")
    checkpoint_every: int = Field(500, ge=1, description="save a checkpoint every N steps (and at the end)")
    keep_checkpoints: int = Field(2, ge=1, description="keep the newest K checkpoints")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="stop after N evaluations without a new best val_loss; None = off")
    seed: int = Field(0, ge=0, description="seeds model init, data windows and dropout")
    run_dir: str = Field("runs/run", description="directory for config, metrics, checkpoints, plots")
    allow_changes: list[str] = Field(
        [], description="keys a resume (`--resume`) may change although its checkpoint was trained with other values "
                        f"(see Resuming above), from: {', '.join(CHANGES_ON_REQUEST)}")

    @field_validator("allow_changes", mode="before")
    @classmethod
    def _changeable(cls, keys: Any) -> Any:
        keys = [keys] if isinstance(keys, str) else keys  # train.allow_changes=train.lr
        for key in keys if isinstance(keys, list) else []:
            if key in CHANGES_ON_REQUEST or key in {f"train.{k}" for k in RESUMABLE_CHANGES}:
                continue
            valid = [f"{s}.{k}" for s in SECTIONS for k in _model_type(RunConfig.model_fields[s].annotation).model_fields]
            if key not in valid:
                close = difflib.get_close_matches(str(key), valid, n=3, cutoff=0.5)
                raise ValueError(f"{key!r} is not a config key" + (f"; did you mean {', '.join(close)}?" if close else ""))
            raise ValueError(f"{key} cannot change when a run resumes (the checkpoint's weights, tokenizer or data "
                             f"depend on it): start a new train.run_dir to change it; train.allow_changes may name "
                             f"{', '.join(CHANGES_ON_REQUEST)}")
        return keys


class SavedAsYaml:
    """``to_yaml`` and an atomic ``save`` for a config class (pydantic model)."""

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def save(self, path: str | os.PathLike) -> None:
        """Write the resolved config as YAML, atomically."""
        write_text(path, self.to_yaml())


class RunConfig(SavedAsYaml, BaseModel):
    """A whole recipe: ``model``, ``data``, ``objective`` and ``train`` sections."""

    model_config = ConfigDict(extra="forbid")

    model: ModelSection = Field(default_factory=ModelSection)
    data: DataConfig = Field(default_factory=DataConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)



# ---------------------------------------------------------------- loading and overrides

def parse_overrides(overrides: list[str]) -> dict:
    """``["train.lr=3e-4", "model.attention=[a, b]"]`` -> nested dict ``{"train": {"lr": 0.0003}, ...}``.

    Raises:
        ValueError: an item without ``=`` or with an empty key.
    """
    out: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ValueError(f"override {item!r} is not of the form section.key=value (e.g. train.lr=3e-4)")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r} conflicts with an earlier override of {part!r}")
        node[parts[-1]] = parse_value(raw)
    return out


def parse_value(raw: str) -> Any:
    """A YAML scalar/list/mapping; ``3e-4`` (which YAML 1.1 reads as a string) becomes a float."""
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw
    if isinstance(value, str):
        try:
            return float(value) if any(c in value.lower() for c in ".e") and value.lower() not in ("inf", "nan") else value
        except ValueError:
            return value
    return value


def deep_merge(base: dict, update: dict) -> dict:
    """Recursively merge ``update`` into a copy of ``base`` (mappings merge, everything else replaces)."""
    out = dict(base)
    for k, v in update.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a recipe (YAML file, a run directory holding ``config.yaml``, or ``None`` = defaults) and apply overrides.

    The file and the overrides may each use the old section name ``task`` for ``objective``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: bad YAML, unknown keys (with the closest valid ones), wrong types (with the expected type),
            or a file or override list giving both ``task`` and ``objective``.
    """
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if p.is_dir():
            p = p / "config.yaml"
        if not p.is_file():
            raise FileNotFoundError(f"config file {str(p)!r} not found; give a YAML recipe such as configs/char-gpt.yaml")
        raw = rename_old_sections(load_yaml(p, f"a mapping with sections {list(SECTIONS)}"), str(p))
    raw = deep_merge(raw, rename_old_sections(parse_overrides(overrides or []), "the overrides"))
    return build_config(raw)


def rename_old_sections(raw: dict, where: str = "the config") -> dict:
    """``raw`` with each old section name (``task``) replaced by the current one (``objective``).

    Raises:
        ValueError: ``raw`` has a section under both names (``where`` names the file or source in the message).
    """
    if not isinstance(raw, dict) or not any(old in raw for old in OLD_SECTION_NAMES):
        return raw
    out = dict(raw)
    for old, new in OLD_SECTION_NAMES.items():
        if old in out:
            if new in out:
                raise ValueError(f"both a {old!r} and an {new!r} section in {where}; {old!r} is the old name of "
                                 f"{new!r}: keep only {new!r}")
            out[new] = out.pop(old)
    return out


def build_config(raw: dict) -> RunConfig:
    """Validate a nested dict into a :class:`RunConfig` with readable errors (an old ``task`` section is read as
    ``objective``; see :func:`rename_old_sections`)."""
    raw = rename_old_sections(raw)
    check_keys(raw, RunConfig, "")
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ValueError(format_validation_error(e, raw)) from None


def check_keys(raw: Any, model: type[BaseModel], prefix: str) -> None:
    """Raise ``ValueError`` for the first key of ``raw`` that ``model`` does not declare (recursing into sections)."""
    if not isinstance(raw, dict):
        return
    fields = model.model_fields
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            valid = [f"{prefix}{f}" for f in fields]
            close = difflib.get_close_matches(dotted, valid, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"unknown config key {dotted!r}.{hint} Valid keys{' in ' + prefix[:-1] if prefix else ''}: "
                             f"{', '.join(valid)}")
        sub = _model_type(fields[key].annotation)
        if sub is not None:
            check_keys(value, sub, f"{dotted}.")


def _model_type(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def format_validation_error(e: ValidationError, raw: dict, root: type[BaseModel] | None = None) -> str:
    """One line per problem: dotted key, the expected type, the value given and pydantic's reason (``root``: the
    config class validated, default :class:`RunConfig`)."""
    lines = []
    for err in e.errors():
        loc = [str(p) for p in err["loc"] if not str(p).startswith(("function-", "union["))]
        key = ".".join(loc) or "config"
        expected = expected_type(loc, root or RunConfig)
        given = err.get("input")
        given_txt = "" if isinstance(given, dict) else f"; got {given!r} ({type(given).__name__})"
        exp_txt = f"expected {expected}" if expected else "invalid value"
        lines.append(f"{key}: {exp_txt}{given_txt} — {err['msg']}")
    return "invalid config:\n  " + "\n  ".join(lines)


def expected_type(loc: list[str], root: type[BaseModel] | None = None) -> str | None:
    """Human-readable annotation of the field at dotted location ``loc`` of ``root`` (default :class:`RunConfig`;
    ``None`` if not a field)."""
    model: type[BaseModel] | None = root or RunConfig
    annotation = None
    for part in loc:
        if model is None or part not in model.model_fields:
            return None if annotation is None else _type_name(annotation)
        annotation = model.model_fields[part].annotation
        model = _model_type(annotation)
    return None if annotation is None or model is not None else _type_name(annotation)


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")
