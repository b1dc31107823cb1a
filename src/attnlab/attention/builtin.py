"""Imports every built-in kernel file so that its ``@register_attention`` runs.

Add one line here when you add a mechanism file.
"""

from . import softmax  # noqa: F401
