"""``python -m pyro_ssvi``: the ``pyro-ssvi`` command (see :mod:`pyro_ssvi.app`)."""

import sys

from .app import main

sys.exit(main())
