"""Plots and views: loss curves, confusion matrices, image grids, and what attention does (``attention.py``: rollout,
gradient rollout, head importance, mean attention distance)."""

from .attention import grad_rollout, head_importance, mean_attention_distance, rollout
from .curves import plot_loss_curve, read_metrics, smooth

__all__ = ["grad_rollout", "head_importance", "mean_attention_distance", "plot_loss_curve", "read_metrics", "rollout", "smooth"]
