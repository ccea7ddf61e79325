"""`python -m devstack up|down|status`: start, stop or show the embedded local stack."""

from __future__ import annotations

import argparse
import sys

from core import log as logsetup
from core import settings as settings_mod
from devstack import StackError, down, up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status"])
    args = parser.parse_args(argv)
    logsetup.setup()
    current = settings_mod.load()
    if args.command == "down":
        stopped = down(current)
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running under the stack's control"))
        print(f"data kept in {current.local_dir} (delete it for a clean slate)")
        return 0
    try:
        _, statuses = up(current)
    except StackError as exc:
        print(f"local stack: {exc}", file=sys.stderr)
        return 1
    for st in statuses:
        owner = "managed" if st.managed else "external"
        print(f"  {st.name:9} {'ok' if st.healthy else 'DOWN':5} {owner:9} {st.url}  ({st.detail})")
    print(f"logs: {current.local_dir / 'logs'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
