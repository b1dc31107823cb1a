"""``attnlab distill``: a teacher encoder into a student (optionally through a teacher assistant), on the trainer
(checkpoints, bit-exact resume, progress bar, bf16), then the export and the evaluation table.

A run folder holds the trainer's files, ``export/`` (the student for transformers / sentence-transformers /
attnlab) and ``eval.json``; with a teacher assistant, ``assistant/`` is the assistant's own run folder.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..core.io import write_json
from ..train import distributed as D
from ..train.checkpoint import latest_checkpoint, list_checkpoints
from ..train.lock import RunLock
from ..train.trainer import Trainer
from .config import DistillConfig
from .evaluate import evaluate_encoder, format_table
from .export import export_student
from .feed import SentenceFeed
from .models import EXPORT, build_student, load_teacher, teacher_folder, weights_digest
from .step import DistillStep

ASSISTANT = "assistant"


@dataclass
class DistillResult:
    """What :func:`distill` did: the run folder, the exported student (``None`` when it could not be exported), the
    steps trained, and the evaluation rows (empty without evaluation)."""

    run_dir: Path
    export: Path | None
    step: int = 0
    rows: list[dict] = field(default_factory=list)
    table: str = ""


def distill(cfg: DistillConfig, resume: bool = False, overwrite: bool = False, progress: bool = True,
            evaluate: bool = True, train: bool = True) -> DistillResult:
    """Distill ``cfg.teacher`` into the student ``cfg.model`` and evaluate both.

    Args:
        resume: continue the newest checkpoint of ``train.run_dir`` (and of its assistant run).
        overwrite: start again in a folder that holds a run.
        evaluate: print and write (``eval.json``) the table of teacher, assistant and student.
        train: ``False`` exports and evaluates the student as initialised (the layer-drop baseline).

    Raises:
        ValueError: a bad recipe (names the key), an unusable teacher, a loss the student cannot take, a resume with
            another teacher or config, or a distributed launch (distillation runs in one process).
        FileExistsError / RunLockedError: the folder holds a run (no flag) or another process writes it.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("attnlab distill runs in one process; launch it without torchrun")
    run_dir = Path(cfg.train.run_dir)
    teacher_path = cfg.teacher.path
    if cfg.objective.assistant is not None:
        stage = assistant_config(cfg)
        _stage(stage, resume, overwrite, progress, train, skip_finished=not overwrite)
        cfg = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"path": stage.train.run_dir,
                                                                                "layer": None, "sha256": None})})
    student, step = _stage(cfg, resume, overwrite, progress, train)
    export = run_dir / EXPORT if (run_dir / EXPORT / "config.json").is_file() else None
    result = DistillResult(run_dir, export, step)
    if evaluate:
        models = {f"teacher ({teacher_path})": load_teacher(teacher_path)}
        if cfg.teacher.path != teacher_path:
            models["assistant"] = load_teacher(cfg.teacher.path)
        models["student"] = student.eval()
        result.rows, result.table = evaluation_table(models, run_dir / "eval.json")
    return result


def assistant_config(cfg: DistillConfig) -> DistillConfig:
    """The teacher assistant's recipe (MiniLM, Wang et al. 2020): the teacher's depth and the student's width unless
    ``objective.assistant`` says otherwise, the same losses, its own run folder ``RUN/assistant``."""
    given = dict(cfg.objective.assistant or {})
    keep = {k: v for k, v in cfg.model.model_dump(include=cfg.model.model_fields_set).items()
            if k in ("dim", "num_heads", "num_kv_heads", "head_dim", "mlp_dim", "attention", "attention_options")}
    model = type(cfg.model).model_validate({"name": cfg.model.name, **keep, **given})
    steps = cfg.objective.assistant_steps or cfg.train.steps
    train = cfg.train.model_copy(update={"run_dir": str(Path(cfg.train.run_dir) / ASSISTANT), "steps": steps})
    objective = cfg.objective.model_copy(update={"assistant": None, "assistant_steps": None})
    return cfg.model_copy(update={"model": model, "train": train, "objective": objective})


def _stage(cfg: DistillConfig, resume: bool, overwrite: bool, progress: bool, train: bool,
           skip_finished: bool = False):
    """Distill one teacher into one model in ``cfg.train.run_dir`` and export it; -> (model, steps trained)."""
    info = D.DistInfo(device=D.resolve_device(cfg.train.device))
    teacher = load_teacher(cfg.teacher.path, info.device)
    digest = weights_digest(teacher)
    if cfg.teacher.sha256 not in (None, digest):
        raise ValueError(f"teacher.sha256={cfg.teacher.sha256!r} does not match the weights in {cfg.teacher.path!r} "
                         f"({digest}); remove teacher.sha256 (attnlab fills it in)")
    cfg = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"sha256": digest})})
    run_dir = Path(cfg.train.run_dir)
    if skip_finished and _finished(run_dir, cfg.train.steps):
        tqdm.write(f"attnlab: {run_dir} already holds its finished {cfg.train.steps}-step run; using it")
        return None, cfg.train.steps
    if resume and list_checkpoints(run_dir):
        _check_teacher(run_dir, cfg)
    resume = resume and bool(list_checkpoints(run_dir))  # an assistant not started yet starts now
    if not train:
        student = _untrained(cfg, teacher, run_dir, overwrite)
        _export(student, run_dir / EXPORT, cfg)
        return student, 0
    holder: dict = {}

    def build(c, device, feed, tokenizer_file):
        student = build_student(c.model, teacher)
        holder["step"] = DistillStep(teacher, student, c.objective.losses, c.objective.relation_heads, c.teacher.layer)
        return feed, student, c

    feed = SentenceFeed(cfg.data, teacher.tokenizer)
    trainer = Trainer(cfg, info, progress=progress, feed=feed, build=build,
                      step_fn=lambda m, b: holder["step"](m, b))
    try:
        trainer.prepare(resume=resume, overwrite=overwrite)
        tqdm.write(_opening(cfg, trainer, resume))
        result = trainer.fit()
    finally:
        trainer.close()
    tqdm.write(f"{result.stopped} at step {result.step} after {result.train_seconds:.0f} s of training; final val "
               f"loss {result.final_val_loss if result.final_val_loss is None else round(result.final_val_loss, 5)}")
    student = trainer.raw_model
    _export(student, run_dir / EXPORT, cfg)
    return student.eval(), result.step


def _untrained(cfg: DistillConfig, teacher, run_dir: Path, overwrite: bool):
    """The student as initialised, with the run's config recorded (``--no-train``)."""
    torch.manual_seed(cfg.train.seed)
    student = build_student(cfg.model, teacher)
    DistillStep(teacher, student, cfg.objective.losses, cfg.objective.relation_heads, cfg.teacher.layer)
    lock = RunLock(run_dir).acquire()
    try:
        if (run_dir / "config.yaml").exists() and not overwrite:
            raise FileExistsError(f"run directory {run_dir} already holds a run; pass --overwrite to replace it")
        cfg.save(run_dir / "config.yaml")
    finally:
        lock.release()
    return student.eval()


def _finished(run_dir: Path, steps: int) -> bool:
    try:
        return latest_checkpoint(run_dir).step >= steps and (run_dir / EXPORT / "config.json").is_file()
    except (FileNotFoundError, ValueError, OSError):
        return False


def _check_teacher(run_dir: Path, cfg: DistillConfig) -> None:
    """Raises ``ValueError`` when the newest checkpoint was distilled from other teacher weights."""
    ckpt = latest_checkpoint(run_dir)
    stored = (ckpt.state.get("fingerprint") or {}).get("config", {}).get("teacher", {}).get("sha256")
    if stored is not None and stored != cfg.teacher.sha256:
        raise ValueError(f"cannot resume {run_dir}: the teacher in {str(teacher_folder(cfg.teacher.path))!r} is not "
                         f"the one checkpoint {ckpt.path.name} was distilled from (weights sha256 {stored[:12]}... -> "
                         f"{cfg.teacher.sha256[:12]}...); restore that teacher, or start a new train.run_dir")


def _export(student, folder: Path, cfg: DistillConfig) -> Path | None:
    if student is None:
        return folder if (folder / "config.json").is_file() else None
    try:
        return export_student(student, folder, teacher=cfg.teacher.path, losses=cfg.objective.losses)
    except ValueError as e:
        print(f"attnlab: the student was not exported to {folder} ({e}); its weights are in the run's checkpoints",
              file=sys.stderr)
        return None


def _opening(cfg: DistillConfig, trainer: Trainer, resume: bool) -> str:
    s, feed = trainer.raw_model.cfg, trainer.data
    losses = ", ".join(f"{k} x {w:g}" for k, w in cfg.objective.losses.items())
    return (f"{'resuming' if resume else 'distilling'} {cfg.teacher.path} into a {s.num_layers} x {s.dim} student "
            f"({s.num_heads} heads, attention {s.attention}, init {cfg.model.init}) on {feed.num_sentences:,} sentences "
            f"of {cfg.data.dataset}; losses {losses}; {trainer.precision}; run folder {cfg.train.run_dir}")


def evaluation_table(models: dict, out: Path | None = None, split=None) -> tuple[list[dict], str]:
    """Evaluate each named encoder, print the table (shares of the first row in brackets) and write ``out``
    (``split``: the probe's texts and labels, default :func:`~attnlab.data.text.sentences.probe_split`)."""
    rows = []
    for name, model in tqdm(models.items(), desc="evaluate", unit="model", disable=len(models) < 2):
        rows.append(evaluate_encoder(name, model, split))
    table = format_table(rows, reference=rows[0]["model"])
    print(table)
    if out is not None:
        write_json(out, {"rows": rows, "table": table})
    return rows, table


def evaluate_folder(path: str) -> tuple[list[dict], str]:
    """``attnlab distill --eval-only PATH``: the table row of one encoder folder, ``minilm``, or a distill run."""
    return evaluation_table({str(path): load_teacher(path)})
