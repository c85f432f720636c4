"""``python -m neurovfm``: the command line (see :mod:`neurovfm.cli`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
