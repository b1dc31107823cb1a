"""Imports every built-in kernel file so that its ``@register_attention`` runs.

Add one line here when you add a mechanism file.
"""

from . import softmax  # noqa: F401
from . import kdgqa  # noqa: F401
from . import dgqa  # noqa: F401
from . import pgqa  # noqa: F401
from . import selective  # noqa: F401
from . import routing  # noqa: F401
from . import linear  # noqa: F401
from . import combiner  # noqa: F401
from . import gpsa  # noqa: F401
from . import karat  # noqa: F401
from . import deconstructing  # noqa: F401
from . import deconstructing_qk  # noqa: F401
from . import pathways  # noqa: F401
from . import local  # noqa: F401
from . import block_local  # noqa: F401
from . import neighborhood  # noqa: F401
from . import axial  # noqa: F401
