"""`taskmgr`, the command-line client of taskmgrd's local API.

The daemon's API does not exist yet (it comes with the daemon core), so every command says so
plainly instead of pretending to work.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print(
        "taskmgr: the daemon's local API is not built yet; `taskmgrd demo` shows what exists today",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
