"""Plots: loss curves (more views — attention maps, comparisons — live in sibling modules)."""

from .curves import plot_loss_curve, read_metrics, smooth

__all__ = ["plot_loss_curve", "read_metrics", "smooth"]
