"""``python -m ploke_io_server``."""

from .cli import main

raise SystemExit(main())
