"""``python -m pyro_ssvi.app``: the ``pyro-ssvi`` command."""

import sys

from . import main

sys.exit(main())
