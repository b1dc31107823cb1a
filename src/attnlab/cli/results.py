"""How ``attnlab eval`` prints a result dict of :func:`attnlab.train.evaluate_run` (``--json`` prints it raw)."""

from __future__ import annotations


def eval_lines(r: dict, split: str) -> list[str]:
    """The lines ``attnlab eval`` prints: a forecaster's test table, a feed run's test metrics (with decoded
    samples of a seq2seq run), or a language model's loss over ``split``."""
    if r.get("objective") == "forecast":  # the test table: the model and the baselines
        from ..train.forecast_feed import report_lines

        return [*report_lines(r), f"checkpoint step {r['step']}"]
    if "objective" in r:  # a seq2seq, masked-LM or suite dataset run: its test split and metrics
        scores = ", ".join(f"{k} {v:.4f}" for k, v in r.items() if isinstance(v, float))
        how = f"{r['objective']}, test-time augmentation {r['tta']}" if "tta" in r else r["objective"]
        n = r.get("max_batches")
        how += "" if n is None else f", first {n} batch{'es' if n > 1 else ''}"
        return [f"{r['split']} ({how}): {scores}; checkpoint step {r['step']}",
                *(f"  {s['source'][:60]!r} -> {s['prediction']!r} (reference {s['reference']!r})"
                  for s in r.get("samples", []))]
    unit = next(k for k in r if k.startswith("bits_per_")).removeprefix("bits_per_")
    return [f"{split} loss {r['loss']:.4f} nats/{unit} ({r[f'bits_per_{unit}']:.3f} bits/{unit}) "
            f"over {r['tokens']:,} tokens, checkpoint step {r['step']}"]
