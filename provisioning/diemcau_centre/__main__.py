"""``python -m diemcau_centre``: the same as the ``diemcau-centre`` command."""

import sys

from .cli import main

sys.exit(main())
