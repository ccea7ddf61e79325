"""`python -m devstack up|serve|down|status`: start, stop or show the embedded local stack.

`serve` starts the stack and, on it, the read-only feature server and the inference API.
"""

from __future__ import annotations

import argparse
import sys

from core import log as logsetup
from core import settings as settings_mod
from devstack import StackError, down, up, up_serving


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument("command", choices=["up", "serve", "down", "status"])
    args = parser.parse_args(argv)
    logsetup.setup()
    current = settings_mod.load()
    if args.command == "down":
        stopped = down(current)
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running under the stack's control"))
        print(f"data kept in {current.local_dir} (delete it for a clean slate)")
        return 0
    try:
        settings, statuses = up(current)
        if args.command == "serve":
            statuses += up_serving(settings)
    except StackError as exc:
        print(f"local stack: {exc}", file=sys.stderr)
        return 1
    for st in statuses:
        owner = "managed" if st.managed else "external"
        print(f"  {st.name:9} {'ok' if st.healthy else 'DOWN':5} {owner:9} {st.url}  ({st.detail})")
    print(f"logs: {current.local_dir / 'logs'}")
    if args.command == "serve":
        from serving import token

        api = f"http://127.0.0.1:{settings.api_port}"
        print(f"\nfeature server: {settings.feature_server_url} (read-only)   inference API: {api}")
        print(f"API token (kept in {token.local_token_file(settings)} unless FP_API_TOKEN is set):")
        print(f"  {token.resolve(settings)}")
        print(f"try:  curl -s -H \"Authorization: Bearer $(cat {token.local_token_file(settings)})\" "
              f"{api}/v1/employees/1/attrition")
    return 0


if __name__ == "__main__":
    sys.exit(main())
