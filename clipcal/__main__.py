"""``python -m clipcal`` — see :mod:`clipcal.cli`."""

from clipcal.cli import main

raise SystemExit(main())
