"""Seeded synthetic datasets of the suite: recall, copying, modular arithmetic, ListOps, in-context regression,
and seq2seq reversal and addition. Each generator is deterministic given its ``seed`` (see
:mod:`attnlab.data.base`)."""

from ..registry import register_dataset
from .listops import make_listops
from .modular import make_modular_addition
from .recall import make_mqar, make_selective_copy
from .regression import make_icl_regression
from .seq2seq import make_addition, make_reversal

__all__ = ["make_addition", "make_icl_regression", "make_listops", "make_modular_addition", "make_mqar", "make_reversal",
           "make_selective_copy"]

register_dataset("mqar", make_mqar, "multi-query associative recall: key-value pairs, then queries", "accuracy",
                 "lm")
register_dataset("selective_copy", make_selective_copy, "copy tokens scattered among noise, in order", "accuracy",
                 "lm")
register_dataset("icl_regression", make_icl_regression, "in-context linear regression, error vs examples", "mse",
                 "regression")
register_dataset("modular_addition", make_modular_addition, "a + b mod p with a small train fraction (grokking)",
                 "accuracy", "lm")
register_dataset("listops", make_listops, "nested MAX/MIN/MED/SM expressions, value 0-9", "accuracy", "classify")
register_dataset("reversal", make_reversal, "reverse a random symbol sequence (encoder-decoder)", "exact_match",
                 "seq2seq")
register_dataset("addition", make_addition, "multi-digit a + b -> the sum's digits (encoder-decoder)", "exact_match",
                 "seq2seq")
