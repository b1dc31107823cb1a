"""Tables and plots of a comparison grid, rebuilt from ``results.jsonl`` alone (``attnlab compare --report``).

Writes into the run directory: ``results.md`` (one Markdown table per task), ``results.csv`` (one row per
task and variant), ``quality_vs_throughput.png`` (mean quality ± std over seeds against training
tokens/s, one panel per task) and ``loss_curves.png`` (mean training loss per step of each variant, one
panel per task).
"""

from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path

from ..config import atomic_write_text
from .grid import RESULTS, read_results

COLUMNS = ["task", "variant", "attention", "metric", "quality_mean", "quality_std", "seeds", "final_val_loss",
           "train_tokens_per_s", "infer_tokens_per_s", "peak_memory_mb", "parameters", "steps", "train_tokens"]


def _mean(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def summarize(records: list[dict]) -> list[dict]:
    """One row per (task, variant) in first-seen order: means over seeds (std of quality, 0 for one seed)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["task"], r["variant"]), []).append(r)
    rows = []
    for (task, variant), rs in groups.items():
        q = [r["quality"] for r in rs]
        rows.append({
            "task": task, "variant": variant, "attention": rs[0]["attention"], "metric": rs[0]["metric"],
            "quality_mean": statistics.fmean(q), "quality_std": statistics.stdev(q) if len(q) > 1 else 0.0,
            "seeds": len(rs), "final_val_loss": _mean([r["final_val_loss"] for r in rs]),
            "train_tokens_per_s": _mean([r["train_tokens_per_s"] for r in rs]),
            "infer_tokens_per_s": _mean([r["infer_tokens_per_s"] for r in rs]),
            "peak_memory_mb": _mean([r.get("peak_memory_mb") for r in rs]),
            "parameters": rs[0]["parameters"], "steps": rs[0]["steps"], "train_tokens": rs[0]["train_tokens"],
            "higher_is_better": rs[0]["higher_is_better"],
        })
    return rows


def _fmt(x, digits: int = 0) -> str:
    if x is None:
        return "n/a"
    return f"{x:,.{digits}f}"


def markdown_table(rows: list[dict]) -> str:
    """Markdown: a heading and a table per task, variants sorted best quality first."""
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        rs = [r for r in rows if r["task"] == task]
        rs.sort(key=lambda r: -r["quality_mean"] if r["higher_is_better"] else r["quality_mean"])
        metric, better = rs[0]["metric"], "higher" if rs[0]["higher_is_better"] else "lower"
        out += [f"### {task}", "",
                f"{metric} ({better} is better), mean ± std over seeds; {rs[0]['steps']} steps, "
                f"{rs[0]['train_tokens']:,} training tokens per cell.", "",
                f"| variant | {metric} | seeds | train tokens/s | inference tokens/s | peak memory (MiB) | parameters |",
                "|---|---|---|---|---|---|---|"]
        for r in rs:
            out.append(f"| {r['variant']} | {r['quality_mean']:.4f} ± {r['quality_std']:.4f} | {r['seeds']} | "
                       f"{_fmt(r['train_tokens_per_s'])} | {_fmt(r['infer_tokens_per_s'])} | "
                       f"{_fmt(r['peak_memory_mb'])} | {r['parameters']:,} |")
        out.append("")
    return "\n".join(out)


def csv_table(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _panels(n: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(5 * n, 4), squeeze=False)
    return plt, fig, axes[0]


def _save(plt, fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def plot_quality_vs_throughput(rows: list[dict], path: Path) -> None:
    """One panel per task: quality (mean ± std over seeds) against training tokens/s, a point per variant."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    plt, fig, axes = _panels(len(tasks))
    for ax, task in zip(axes, tasks):
        for r in (r for r in rows if r["task"] == task):
            ax.errorbar(r["train_tokens_per_s"], r["quality_mean"], yerr=r["quality_std"], fmt="o", capsize=4,
                        label=r["variant"])
        ax.set(title=task, xlabel="training tokens/s", ylabel=next(r["metric"] for r in rows if r["task"] == task))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(plt, fig, path)


def plot_loss_curves(records: list[dict], path: Path) -> None:
    """One panel per task: training loss per step of each variant, averaged over seeds."""
    tasks = list(dict.fromkeys(r["task"] for r in records))
    plt, fig, axes = _panels(len(tasks))
    for ax, task in zip(axes, tasks):
        variants = list(dict.fromkeys(r["variant"] for r in records if r["task"] == task))
        for v in variants:
            curves = [r["losses"] for r in records if r["task"] == task and r["variant"] == v and r["losses"]]
            n = min(len(c) for c in curves)
            mean = [statistics.fmean(c[i] for c in curves) for i in range(n)]  # (steps,)
            ax.plot(range(1, n + 1), mean, label=v, lw=1)
        ax.set(title=task, xlabel="step", ylabel="training loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(plt, fig, path)


def write_report(run_dir: str | Path) -> str:
    """Rebuild ``results.md``, ``results.csv`` and the two PNGs of ``run_dir`` from its ``results.jsonl``;
    returns the Markdown.

    Raises:
        FileNotFoundError: ``run_dir`` has no ``results.jsonl`` or it holds no finished cell.
    """
    run_dir = Path(run_dir)
    records = read_results(run_dir / RESULTS)
    if not records:
        raise FileNotFoundError(f"{run_dir / RESULTS} is missing or empty; run `attnlab compare CONFIG` first")
    rows = summarize(records)
    md = markdown_table(rows)
    atomic_write_text(run_dir / "results.md", md)
    atomic_write_text(run_dir / "results.csv", csv_table(rows))
    plot_quality_vs_throughput(rows, run_dir / "quality_vs_throughput.png")
    plot_loss_curves(records, run_dir / "loss_curves.png")
    return md
