"""Plots of a comparison grid, drawn from ``results.jsonl`` records (matplotlib, Agg backend):

- ``quality_vs_throughput.png``: mean quality ± std over seeds against training tokens/s, a panel per task;
- ``loss_curves.png``: mean training loss per step of each variant, a panel per task;
- ``grokking.png``: train (dashed) and validation (solid) accuracy against step of each variant, for the
  tasks whose records carry accuracy curves (modular addition; Power et al. 2022, Fig. 1);
- ``icl_regression.png``: squared error against the number of in-context examples of each variant, with
  the least-squares and ridge baselines (Garg et al. 2022, Fig. 2; Akyürek et al. 2022).

Curves are averaged over seeds (over the common prefix of steps / positions).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from ..core.io import write_with


def _panels(n: int, width: float = 5.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(width * n, 4), squeeze=False)
    return plt, fig, axes[0]


def _save(plt, fig, path: Path) -> None:
    """Write ``fig`` to ``path`` as PNG, atomically, and close it."""
    try:
        fig.tight_layout()
        write_with(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)


def _by_task_variant(records: list[dict]) -> dict[str, dict[str, list[dict]]]:
    """``{task: {variant: [records over seeds]}}`` in first-seen order."""
    out: dict[str, dict[str, list[dict]]] = {}
    for r in records:
        out.setdefault(r["task"], {}).setdefault(r["variant"], []).append(r)
    return out


def _mean_curve(curves: list[list[float]]) -> list[float]:
    """Elementwise mean over seeds of equal-meaning curves, cut to the shortest."""
    n = min(len(c) for c in curves)
    return [statistics.fmean(c[i] for c in curves) for i in range(n)]


def _colour(i: int) -> tuple:
    """A distinct colour for up to 20 variants (matplotlib's tab20)."""
    import matplotlib

    return matplotlib.colormaps["tab20"](i % 20)


def _finish(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    if len(ax.get_legend_handles_labels()[1]) > 6:  # many variants: the legend goes beside the panel
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize=8)


def plot_quality_vs_throughput(rows: list[dict], path: Path) -> None:
    """One panel per task: quality (mean ± std over seeds) against training tokens/s, a point per variant."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    plt, fig, axes = _panels(len(tasks))
    for ax, task in zip(axes, tasks):
        for r in (r for r in rows if r["task"] == task):
            ax.errorbar(r["train_tokens_per_s"], r["quality_mean"], yerr=r["quality_std"], fmt="o", capsize=4,
                        label=r["variant"])
        _finish(ax, task, "training tokens/s", next(r["metric"] for r in rows if r["task"] == task))
    _save(plt, fig, path)


def plot_loss_curves(records: list[dict], path: Path) -> None:
    """One panel per task: training loss per step of each variant, averaged over seeds."""
    groups = _by_task_variant(records)
    plt, fig, axes = _panels(len(groups))
    for ax, (task, variants) in zip(axes, groups.items()):
        for v, rs in variants.items():
            curves = [r["losses"] for r in rs if r["losses"]]
            if curves:
                mean = _mean_curve(curves)  # (steps,)
                ax.plot(range(1, len(mean) + 1), mean, label=v, lw=1)
        _finish(ax, task, "step", "training loss")
    _save(plt, fig, path)


def plot_grokking(records: list[dict], path: Path) -> bool:
    """Train (dashed) and validation (solid) accuracy vs step, one colour per variant, a panel per task with
    accuracy curves. Returns False (and writes nothing) when no record has them."""
    groups = _by_task_variant([r for r in records if r.get("val_accuracy_curve")])
    if not groups:
        return False
    plt, fig, axes = _panels(len(groups), 7.0)
    for ax, (task, variants) in zip(axes, groups.items()):
        for i, (v, rs) in enumerate(variants.items()):
            for key, style in (("train_accuracy_curve", "--"), ("val_accuracy_curve", "-")):
                curves = [r[key] for r in rs]
                steps = [s for s, _ in curves[0]][:min(len(c) for c in curves)]
                acc = _mean_curve([[a for _, a in c] for c in curves])
                ax.plot(steps, acc, style, color=_colour(i), lw=1.2, label=v if style == "-" else None)
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        _finish(ax, f"{task}: train (dashed) vs validation (solid)", "step", "accuracy")
    _save(plt, fig, path)
    return True


def plot_icl_regression(records: list[dict], path: Path) -> bool:
    """Squared error vs in-context examples per variant (mean over seeds) against least squares and ridge,
    a panel per regression task. Returns False (and writes nothing) when no record has an ``icl_curve``."""
    groups = _by_task_variant([r for r in records if r.get("icl_curve")])
    if not groups:
        return False
    plt, fig, axes = _panels(len(groups), 7.0)
    for ax, (task, variants) in zip(axes, groups.items()):
        for i, (v, rs) in enumerate(variants.items()):
            ks = rs[0]["icl_curve"]["num_examples"]
            err = _mean_curve([r["icl_curve"]["model"] for r in rs])
            ax.plot(ks[:len(err)], err, "o-", color=_colour(i), ms=3, lw=1.2, label=v)
        base = next(iter(variants.values()))[0]["icl_curve"]
        for name, style in (("least_squares", "k--"), ("ridge", "k:")):
            ax.plot(base["num_examples"], base[name], style, lw=1.5, label=name.replace("_", " "))
        ax.set_ylim(bottom=0)
        _finish(ax, task, "in-context examples", "squared error (test)")
    _save(plt, fig, path)
    return True
