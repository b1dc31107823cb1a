"""``python -m attnlab.cli ...`` (and ``torchrun -m attnlab.cli ...``): the ``attnlab`` command."""

import sys

from . import main

sys.exit(main())
