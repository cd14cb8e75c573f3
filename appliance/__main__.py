"""``python -m appliance`` is the ``plowshare`` command.

Guarded: the render sandbox's worker processes may import the main module
(multiprocessing's spawn/forkserver rule), and must not run the CLI.
"""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
