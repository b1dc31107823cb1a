"""Tables and plots of a comparison grid, rebuilt from ``results.jsonl`` alone (``attnlab compare --report``).

Writes into the run directory: ``results.md`` (an overview of every variant on every task with mean
ranks, one Markdown table per task (a forecasting task lists its closed-form baselines as rows), then the cells that were skipped and why), ``results.csv`` (one row per task and variant) and the plots of
:mod:`attnlab.compare.plots` (``quality_vs_throughput.png``, ``loss_curves.png``, and ``grokking.png`` /
``icl_regression.png`` when the grid has those tasks).
"""

from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path

from ..core.io import write_text
from .grid import RESULTS, read_results, read_skipped
from .plots import plot_grokking, plot_icl_regression, plot_loss_curves, plot_quality_vs_throughput

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
            "higher_is_better": rs[0]["higher_is_better"], "unit": rs[0].get("unit", "tokens"),
            "baselines": _baselines(rs[0]),
            "forecast_baselines": rs[0].get("forecast_baselines") or {},
        })
    return rows


def _baselines(record: dict) -> dict[str, float]:
    """Baseline errors on the same test split (regression: mean over positions = the cell's mse)."""
    curve = record.get("icl_curve")
    if not curve:
        return {}
    return {name: statistics.fmean(curve[name]) for name in ("least_squares", "ridge", "zero")}


def _baseline_rows(rows: list[dict]) -> list[dict]:
    """Rows of a forecasting task's closed-form baselines (recorded with every cell; same test windows), named
    ``baseline: <name>``, so a table shows plainly where a baseline beats the models."""
    found = next((r["forecast_baselines"] for r in rows if r.get("forecast_baselines")), {})
    return [{"variant": f"baseline: {name}", "quality_mean": b["mse"], "quality_std": 0.0, "is_baseline": True,
             "higher_is_better": False} for name, b in found.items() if "mse" in b]


def _fmt(x, digits: int = 0) -> str:
    if x is None:
        return "n/a"
    return f"{x:,.{digits}f}"


def markdown_table(rows: list[dict]) -> str:
    """Markdown: a heading and a table per task, variants sorted best quality first."""
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        rs = [r for r in rows if r["task"] == task] + _baseline_rows([r for r in rows if r["task"] == task])
        rs.sort(key=lambda r: -r["quality_mean"] if r["higher_is_better"] else r["quality_mean"])
        head = next(r for r in rs if not r.get("is_baseline"))  # a trained cell: metric, steps, tokens
        metric, better = head["metric"], "higher" if head["higher_is_better"] else "lower"
        unit = head.get("unit", "tokens")  # examples for images, clips and files
        out += [f"### {task}", "",
                f"{metric} ({better} is better), mean ± std over seeds; {head['steps']} steps, "
                f"{head['train_tokens']:,} training {unit} per cell.", "",
                f"| variant | {metric} | seeds | train {unit}/s | inference {unit}/s | peak memory (MiB) | parameters |",
                "|---|---|---|---|---|---|---|"]
        for r in rs:
            if r.get("is_baseline"):  # a closed-form forecasting baseline on the same test windows
                out.append(f"| {r['variant']} | {r['quality_mean']:.4f} | closed form | n/a | n/a | n/a | n/a |")
                continue
            out.append(f"| {r['variant']} | {r['quality_mean']:.4f} ± {r['quality_std']:.4f} | {r['seeds']} | "
                       f"{_fmt(r['train_tokens_per_s'])} | {_fmt(r['infer_tokens_per_s'])} | "
                       f"{_fmt(r['peak_memory_mb'])} | {r['parameters']:,} |")
        if head["baselines"]:
            out += ["", "Baselines on the same test split: " + ", ".join(
                f"{k.replace('_', ' ')} {v:.4f}" for k, v in head["baselines"].items()) + "."]
        out.append("")
    return "\n".join(out)


def overview_table(rows: list[dict]) -> str:
    """Markdown: one row per variant, one quality column per task (best in **bold**), the variant's mean
    rank over the tasks it ran (1 = best), and its training speed relative to ``softmax`` (geometric mean
    over the shared tasks). Variants that ran every task come first, by mean rank. Empty for one task."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    if len(tasks) < 2:
        return ""
    cell = {(r["task"], r["variant"]): r for r in rows}
    ranks: dict[str, list[int]] = {}
    best: dict[str, str] = {}
    for task in tasks:
        rs = sorted((r for r in rows if r["task"] == task),
                    key=lambda r: -r["quality_mean"] if r["higher_is_better"] else r["quality_mean"])
        best[task] = rs[0]["variant"]
        for i, r in enumerate(rs):  # ties share the better rank
            tied = i > 0 and r["quality_mean"] == rs[i - 1]["quality_mean"]
            ranks.setdefault(r["variant"], []).append(ranks[rs[i - 1]["variant"]][-1] if tied else i + 1)
    speed = {}
    for variant in ranks:
        ratios = [cell[t, variant]["train_tokens_per_s"] / cell[t, "softmax"]["train_tokens_per_s"]
                  for t in tasks if (t, variant) in cell and (t, "softmax") in cell
                  and cell[t, variant]["train_tokens_per_s"] and cell[t, "softmax"]["train_tokens_per_s"]]
        speed[variant] = statistics.geometric_mean(ratios) if ratios else None
    variants = list(dict.fromkeys(r["variant"] for r in rows))  # ties keep the config's order
    order = sorted(variants, key=lambda v: (len(ranks[v]) < len(tasks), statistics.fmean(ranks[v])))
    arrows = {t: "↑" if cell[t, best[t]]["higher_is_better"] else "↓" for t in tasks}
    out = ["### Overview", "", "Quality per task (mean over seeds; best in bold, arrow = better direction), mean "
           "rank over the tasks a variant ran, and training tokens/s relative to softmax (geometric mean over "
           "tasks).", "",
           "| variant | " + " | ".join(f"{t} {cell[t, best[t]]['metric']} {arrows[t]}" for t in tasks)
           + " | mean rank | tasks | train speed vs softmax |",
           "|---|" + "---|" * (len(tasks) + 3)]
    for v in order:
        qs = []
        for t in tasks:
            r = cell.get((t, v))
            q = "" if r is None else f"{r['quality_mean']:.3f}"
            qs.append(f"**{q}**" if r is not None and best[t] == v else q)
        sp = "n/a" if speed[v] is None else f"{speed[v]:.2f}x"
        out.append(f"| {v} | " + " | ".join(qs) + f" | {statistics.fmean(ranks[v]):.1f} | {len(ranks[v])} | {sp} |")
    return "\n".join(out) + "\n"


def skipped_table(skipped: list[dict]) -> str:
    """Markdown list of the cells that could not run, one row per (task, variant) with its seeds and reason."""
    if not skipped:
        return ""
    groups: dict[tuple[str, str, str], list[int]] = {}
    for s in skipped:
        groups.setdefault((s["task"], s["variant"], s["reason"]), []).append(s["seed"])
    out = ["### Skipped cells", "", "These cells did not run (nothing was trained); the grid retries them on its "
           "next invocation.", "", "| task | variant | seeds | reason |", "|---|---|---|---|"]
    for (task, variant, reason), seeds in groups.items():
        out.append(f"| {task} | {variant} | {', '.join(map(str, seeds))} | {reason.replace('|', '/')} |")
    return "\n".join(out) + "\n"


def csv_table(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def write_report(run_dir: str | Path) -> str:
    """Rebuild ``results.md``, ``results.csv`` and the PNGs of ``run_dir`` from its ``results.jsonl`` (and
    ``skipped.json``); returns the Markdown.

    Raises:
        FileNotFoundError: ``run_dir`` holds neither a finished nor a skipped cell.
    """
    run_dir = Path(run_dir)
    records = read_results(run_dir / RESULTS)
    skipped = skipped_table(read_skipped(run_dir))
    if not records:
        if not skipped:
            raise FileNotFoundError(f"{run_dir / RESULTS} is missing or empty; run `attnlab compare CONFIG` first")
        write_text(run_dir / "results.md", skipped)  # every cell so far was skipped
        return skipped
    rows = summarize(records)
    overview = overview_table(rows)
    md = (overview + "\n" if overview else "") + markdown_table(rows) + ("\n" + skipped if skipped else "")
    write_text(run_dir / "results.md", md)
    write_text(run_dir / "results.csv", csv_table(rows))
    plot_quality_vs_throughput(rows, run_dir / "quality_vs_throughput.png")
    plot_loss_curves(records, run_dir / "loss_curves.png")
    plot_grokking(records, run_dir / "grokking.png")
    plot_icl_regression(records, run_dir / "icl_regression.png")
    return md


PUBLISH_START, PUBLISH_END = "<!-- results:start -->", "<!-- results:end -->"


def markers(section: str | None) -> tuple[str, str]:
    """The comment markers around a published grid: ``<!-- results:start/end -->`` for the main grid, and
    ``<!-- results:NAME:start/end -->`` for a named one, so one document can hold several grids.

    Raises:
        ValueError: a name with characters other than letters, digits, ``-`` and ``_``.
    """
    if section is None:
        return PUBLISH_START, PUBLISH_END
    if not section or not all(c.isalnum() or c in "-_" for c in section):
        raise ValueError(f"section name {section!r}: use letters, digits, '-' and '_' (e.g. vision)")
    return f"<!-- results:{section}:start -->", f"<!-- results:{section}:end -->"


def publish(run_dir: str | Path, doc: str | Path, section: str | None = None) -> str:
    """Rebuild the report of ``run_dir`` and put its tables between the markers of ``section`` in ``doc``
    (:func:`markers`; appended under a heading with the markers when ``doc`` has none); returns the new section.

    Raises:
        FileNotFoundError: ``run_dir`` has no ``results.jsonl`` (run the grid first).
        ValueError: a bad section name.
    """
    start, end = markers(section)
    run_dir, doc = Path(run_dir), Path(doc)
    if not (run_dir / RESULTS).is_file():
        raise FileNotFoundError(f"{run_dir / RESULTS} not found; run `attnlab compare` with compare.out_dir={run_dir}")
    md = write_report(run_dir)
    n = len(read_results(run_dir / RESULTS))
    how = f"--publish {run_dir} {doc}" + (f" --section {section}" if section else "")
    section_md = (f"{start}\n_Generated by `python -m attnlab.compare.report {how}` ({n} finished cells); plots are "
                  f"in that folder._\n\n{md.strip()}\n{end}")
    text = doc.read_text(encoding="utf-8") if doc.is_file() else ""
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section_md + rest.split(end, 1)[1]
    else:
        title = "Latest full grid" if section is None else f"Latest grid: {section}"
        text = text.rstrip() + f"\n\n## {title}\n\n" + section_md + "\n"
    write_text(doc, text)
    return section_md


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m attnlab.compare.report",
                                 description="rebuild a compare report; --publish also writes it into a Markdown doc")
    ap.add_argument("run_dir", help="compare.out_dir of a grid")
    ap.add_argument("doc", nargs="?", help="with --publish: the document to update (e.g. docs/results.md)")
    ap.add_argument("--publish", action="store_true")
    ap.add_argument("--section", default=None, help="with --publish: a named section of the document (several grids "
                                                    "in one document), e.g. vision")
    args = ap.parse_args(argv)
    if args.publish:
        if not args.doc:
            ap.error("--publish needs the document path, e.g. docs/results.md")
        try:
            print(publish(args.run_dir, args.doc, args.section))
        except (FileNotFoundError, ValueError) as e:
            ap.exit(2, f"error: {e}\n")
    else:
        print(write_report(args.run_dir))


if __name__ == "__main__":
    main()
