"""``python -m shmqueue``: the command line (see :mod:`shmqueue.cli`)."""

from .cli import main

raise SystemExit(main())
