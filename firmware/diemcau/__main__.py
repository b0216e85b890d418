"""``python -m diemcau``: the same as the ``diemcau`` command."""

from .cli import main

raise SystemExit(main())
