"""`taskmgrd`: the daemon's entry point.

Today it offers `taskmgrd demo` (see daemon/demo.py). `taskmgrd run`, the daemon itself, comes
with the daemon core and says so rather than pretending to start.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="taskmgrd", description="task manager for VDSM hosts")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run a bundled simulator and show tasks stopped and reverted")
    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config")
    run.add_argument("--socket")
    run.add_argument("--db")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from daemon.demo import run_demo  # the demo alone pulls in the simulator

        return run_demo()
    print("taskmgrd run: the daemon core is not built yet; try `taskmgrd demo`", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
