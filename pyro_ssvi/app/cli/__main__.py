"""``python -m pyro_ssvi.app.cli``: the ``pyro-ssvi`` command."""

import sys

from . import main

sys.exit(main())
