"""``python -m pyro_ssvi``: the same as the ``pyro-ssvi`` command."""

import sys

from .cli import main

sys.exit(main())
