"""Every built-in attention mechanism, one file per mechanism or paper family.

Importing this package runs each file's ``@register_attention``. A kernel file imports only the
contract (``attnlab.attention.base``, ``context``, ``capabilities``, ``masks``, ``cache``, ``reference``,
``registry``, ``stack``) and the shared engines (``attnlab.attention.engines``), never another kernel
file; a test walks the imports. Add one line here when you add a mechanism file (see docs/design.md,
"Add a kernel").
"""

from . import (  # noqa: F401
    autocorrelation,
    axial,
    block_local,
    combiner,
    deconstructing,
    deconstructing_qk,
    dgqa,
    gpsa,
    karat,
    kdgqa,
    linear,
    neighborhood,
    pathways,
    pgqa,
    routing,
    selective,
    sliding_window,
    softmax,
    window,
)
