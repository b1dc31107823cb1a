"""Training: the loop (:func:`train`), AdamW + schedule, checkpoints, DDP helpers, run loading, and feeds
(:mod:`.feeds`: a suite dataset or a shared corpus as the trainer's data, ``train(cfg, feed=...)``)."""

from .checkpoint import CheckpointError, latest_checkpoint, list_checkpoints, save_checkpoint, verify_checkpoint
from .feeds import CorpusFeed, DatasetFeed, LMDatasetFeed
from .optim import WarmupCosine, build_optimizer, lr_at, param_groups
from .precision import resolve_precision
from .run import LoadedRun, evaluate_run, generate_text, load_run
from .trainer import TrainingDiverged, TrainResult, train

__all__ = [
    "CheckpointError", "CorpusFeed", "DatasetFeed", "LMDatasetFeed", "LoadedRun", "TrainResult", "TrainingDiverged",
    "WarmupCosine", "build_optimizer", "evaluate_run", "generate_text", "latest_checkpoint", "list_checkpoints",
    "load_run", "lr_at", "param_groups", "resolve_precision", "save_checkpoint", "train", "verify_checkpoint",
]
