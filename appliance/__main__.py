"""``python -m appliance`` is the ``plowshare`` command."""

from .cli import main

raise SystemExit(main())
