"""The teacher (loaded, frozen) and the student (built from the teacher's architecture or a preset, initialised at
random, from some of the teacher's layers, or from all its weights)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from ..interop.heads import AbsentHead, Pooler
from ..interop.minilm import minilm_path
from ..interop.pretrained import load_pretrained
from ..models.config import ModelConfig
from ..models.registry import build_model
from ..models.text.encoder import Encoder
from .config import StudentSection

EXPORT = "export"  # the folder of a distill run that holds its student (Hugging Face + sentence-transformers)


def teacher_folder(path: str) -> Path:
    """The model folder ``path`` (``teacher.path``) names: the packaged MiniLM, a folder with ``config.json``, or a
    distill run's exported student.

    Raises:
        ValueError: nothing loadable there (names what is accepted), or MiniLM is not installed (names pip's command).
    """
    if path == "minilm":
        return minilm_path()
    folder = Path(path).expanduser()
    if (folder / "config.json").is_file():
        return folder
    if (folder / EXPORT / "config.json").is_file():
        return folder / EXPORT
    if (folder / "config.yaml").is_file():
        raise ValueError(f"teacher.path={path!r} is a distill run folder without an exported model "
                         f"({folder / EXPORT}); finish its `attnlab distill` run (or resume it) first")
    raise ValueError(f"teacher.path={path!r} is not a model folder: give minilm, a Hugging Face BERT-family folder "
                     "(config.json, weights, tokenizer.json) or an `attnlab distill` run folder")


def load_teacher(path: str, device: torch.device | str | None = None) -> Encoder:
    """The frozen teacher (``path`` as :func:`teacher_folder` reads it, or an ``attnlab train`` run of an encoder with
    a subword tokenizer, :func:`load_run_encoder`): eval mode, no gradients, with its tokenizer.

    Raises:
        ValueError: an unreadable folder (:func:`teacher_folder`, :func:`~attnlab.interop.load_pretrained`), a model
            that is not an encoder (e.g. GPT-2, ViT), or one without ``tokenizer.json``.
    """
    folder = Path(path).expanduser()
    if path != "minilm" and _is_train_run(folder):
        model = load_run_encoder(folder)
    else:
        folder = teacher_folder(path)
        model = load_pretrained(folder)
    if not isinstance(model, Encoder):
        raise ValueError(f"the teacher must be a text encoder (BERT family), but {folder} holds a "
                         f"{type(model).__name__}; distill from a BERT-family folder or minilm")
    if getattr(model, "tokenizer", None) is None:
        raise ValueError(f"the teacher in {folder} has no tokenizer.json; the student reads the teacher's tokenizer")
    model.requires_grad_(False)
    return model.to(device).eval() if device is not None else model.eval()


def _is_train_run(folder: Path) -> bool:
    """A folder written by ``attnlab train`` (its ``config.yaml`` has no ``teacher`` section, unlike a distill run)."""
    import yaml

    if not (folder / "config.yaml").is_file() or (folder / "config.json").is_file():
        return False
    try:
        raw = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(raw, dict) and "teacher" not in raw


def load_run_encoder(folder: Path) -> Encoder:
    """The encoder of an ``attnlab train`` run (e.g. masked-LM pretraining) at its newest checkpoint, with the run's
    ``tokenizer.json``.

    Raises:
        ValueError: the run trained something other than an encoder, or with a character or byte tokenizer (the
            student shares the teacher's tokenizer file, which must be a Hugging Face one: bpe, wordpiece, unigram,
            word); a checkpoint that does not fit.
        FileNotFoundError: the run has no checkpoint yet.
    """
    from ..config import load_config
    from ..data.text.subword import SUBWORD_KINDS
    from ..interop.tokenizer import TextTokenizer
    from ..train.checkpoint import latest_checkpoint, load_weights

    cfg = load_config(folder / "config.yaml")
    if cfg.data.tokenizer not in SUBWORD_KINDS:
        raise ValueError(f"the run {folder} was trained with data.tokenizer={cfg.data.tokenizer!r}; a teacher run needs "
                         f"a tokenizer the student can share as tokenizer.json: train it with data.tokenizer set to "
                         f"one of {list(SUBWORD_KINDS)}")
    model = build_model(cfg.model.name, cfg.model.to_model_config(cfg.model.vocab_size))
    if not isinstance(model, Encoder):
        raise ValueError(f"the run {folder} trained a {type(model).__name__}; the teacher must be a text encoder")
    load_weights(model, latest_checkpoint(folder))
    model.tokenizer = TextTokenizer.from_folder(folder, cfg.model.max_seq_len)
    return model


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over every tensor of ``model``'s state (names, shapes, dtypes and bytes, in name order)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def student_config(section: StudentSection, teacher: Encoder) -> ModelConfig:
    """The student's :class:`ModelConfig`: the teacher's (``name: teacher``) or the preset's, with the keys set in
    ``section``; the vocabulary is the teacher's and ``max_seq_len`` at least its tokenizer's longest input.

    Raises:
        ValueError: an invalid combination (e.g. ``dim`` not divisible by ``num_heads``: names the valid head counts),
            or a ``max_seq_len`` below the teacher tokenizer's limit.
    """
    own = {"name", "vocab_size", "init_from", "init", "init_layers", "init_every"}
    given = section.model_dump(include=section.model_fields_set - own)
    if section.name == "teacher":  # the recipe already holds the teacher's config.json values (DistillConfig)
        base = teacher.cfg.model_dump(exclude_unset=True)
        if {"dim", "num_heads"} & set(given):
            base.pop("head_dim", None)  # derived again from the student's dim and heads
    else:
        base = section.model_dump(exclude=own)
    values = {**base, **given, "vocab_size": teacher.cfg.vocab_size}
    limit = teacher.tokenizer.max_length
    if "max_seq_len" not in given:
        values["max_seq_len"] = max(values.get("max_seq_len", limit), limit)
    elif values["max_seq_len"] < limit:
        raise ValueError(f"model.max_seq_len={values['max_seq_len']} is below the teacher tokenizer's {limit} tokens; "
                         f"raise it to {limit} or more")
    heads, dim = values.get("num_heads", 1), values.get("dim")
    if dim is not None and values.get("head_dim") is None and dim % heads:
        ok = [h for h in range(1, dim + 1) if dim % h == 0 and h <= 64]
        raise ValueError(f"the student's model.dim={dim} is not divisible by model.num_heads={heads}; choose num_heads "
                         f"among {ok}")
    return ModelConfig(**values)


def build_student(section: StudentSection, teacher: Encoder) -> Encoder:
    """The student encoder (with the teacher's tokenizer and Hugging Face record), initialised as ``section.init``
    says.

    Raises:
        ValueError: see :func:`student_config`; a preset that is not an encoder; an initialisation from the teacher
            that does not fit (another width, a layer list of the wrong length or outside the teacher).
        CapabilityError: the student's kernel cannot run an encoder (names those that can).
    """
    cfg = student_config(section, teacher)
    student = type(teacher)(cfg) if section.name == "teacher" else build_model(section.name, cfg)
    if not isinstance(student, Encoder):
        raise ValueError(f"model.name={section.name!r} is a {type(student).__name__}, not an encoder; the student must "
                         "be an encoder preset (`attnlab list models`) or 'teacher'")
    _mirror_heads(student, teacher)
    if section.init == "teacher_layers":
        copy_teacher_layers(student, teacher, teacher_layer_choice(section, teacher, cfg.num_layers))
    elif section.init == "teacher":
        if cfg.num_layers != teacher.cfg.num_layers:
            raise ValueError(f"model.init=teacher copies all {teacher.cfg.num_layers} teacher layers, but the student has "
                             f"{cfg.num_layers}; use model.init=teacher_layers to pick some of them")
        copy_teacher_layers(student, teacher, list(range(1, teacher.cfg.num_layers + 1)))
    student.tokenizer = teacher.tokenizer
    if getattr(teacher, "hf_info", None) is not None and section.name == "teacher":
        student.hf_info = {**teacher.hf_info, "initialised": section.init}
    return student.to(next(teacher.parameters()).device)


def _mirror_heads(student: Encoder, teacher: Encoder) -> None:
    """Give the student the teacher's head layout (no masked-LM head when the teacher has none, BERT's pooler when it
    has one), so that its export is the teacher's Hugging Face class."""
    if isinstance(teacher.mlm_head, AbsentHead):
        student.mlm_head = teacher.mlm_head
    if isinstance(getattr(teacher, "pooler", None), Pooler):
        student.pooler = Pooler(student.cfg.dim)


def teacher_layer_choice(section: StudentSection, teacher: Encoder, student_layers: int) -> list[int]:
    """The teacher layers (from 1) that seed the student's layers: ``init_layers``, or every ``init_every``-th ending
    at the last (``[2, 4, 6]`` for 6 -> 3).

    Raises:
        ValueError: a list of the wrong length or with layers outside the teacher; a step that leaves too few layers.
    """
    L = teacher.cfg.num_layers
    if section.init_layers is not None:
        layers = list(section.init_layers)
        if len(layers) != student_layers or not all(1 <= i <= L for i in layers):
            raise ValueError(f"model.init_layers={layers} must name {student_layers} teacher layers (one per student "
                             f"layer) between 1 and {L}")
        return layers
    k = section.init_every or max(1, L // student_layers)
    layers = list(range(L - k * (student_layers - 1), L + 1, k))
    if len(layers) != student_layers or layers[0] < 1:
        raise ValueError(f"every {k}-th of the teacher's {L} layers gives fewer than the student's {student_layers}; "
                         "lower model.init_every or give model.init_layers")
    return layers


def copy_teacher_layers(student: Encoder, teacher: Encoder, layers: list[int]) -> None:
    """Load the teacher's embeddings, final norm and heads, and its layer ``layers[j]`` into the student's layer
    ``j`` (layers counted from 1). Kernel parameters of the student (a swapped-in kernel's own) keep their init.

    Raises:
        ValueError: a tensor whose shape differs (another width or head layout: names it and the fix).
    """
    t_state, s_state = teacher.state_dict(), student.state_dict()
    picked: dict[str, torch.Tensor] = {}
    for key in s_state:
        src = key
        if key.startswith("blocks."):
            j, rest = key.split(".", 2)[1:]
            src = f"blocks.{layers[int(j)] - 1}.{rest}"
        if ".attn.kernel." in key and src not in t_state:
            continue  # a swapped-in kernel's own parameters: nothing in the teacher holds them
        if src not in t_state:
            raise ValueError(f"the teacher has no tensor {src!r} for the student's {key!r}; initialise with "
                             "model.init=random")
        if t_state[src].shape != s_state[key].shape:
            raise ValueError(f"the teacher's {src} is {tuple(t_state[src].shape)} but the student's {key} is "
                             f"{tuple(s_state[key].shape)}; initialising from the teacher needs its width and heads "
                             "(use model.init=random for another shape)")
        picked[key] = t_state[src]
    student.load_state_dict(picked, strict=False)
