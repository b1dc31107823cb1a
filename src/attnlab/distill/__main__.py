"""``python -m attnlab.distill [FILE]``: the distillation recipe reference (``docs/distill-config.md``)."""

import sys

from ..core.io import write_text
from .config import distill_reference

if len(sys.argv) > 1:
    write_text(sys.argv[1], distill_reference())
else:
    print(distill_reference())
