"""`python -m serving feature-server|api`: run a serving process in the foreground.

    python -m serving feature-server [--host 127.0.0.1] [--port 6566]   # read-only Feast feature server
    python -m serving api [--host 127.0.0.1] [--port 8000]              # inference API

The port defaults come from FP_FEATURE_SERVER_URL and FP_API_PORT. In a pod, pass --host 0.0.0.0.
`make serve` (python -m devstack serve) starts both in the background on the local stack.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from urllib.parse import urlparse

from core import log as logsetup
from core import settings as settings_mod
from serving import feature_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    fsv = sub.add_parser("feature-server", help="the read-only Feast feature server")
    fsv.add_argument("--host", default="127.0.0.1")
    fsv.add_argument("--port", type=int, default=None)
    flags = feature_server.FLAGS
    fsv.add_argument("--workers", type=int, default=flags.workers)
    fsv.add_argument("--keep-alive-timeout", type=int, default=flags.keep_alive_timeout)
    fsv.add_argument("--registry-ttl-sec", type=int, default=flags.registry_ttl_sec)
    fsv.add_argument("--metrics", action=argparse.BooleanOptionalAction, default=flags.metrics,
                     help="Prometheus metrics on FP_FEATURE_SERVER_METRICS_PORT")
    api = sub.add_parser("api", help="the inference API")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    logsetup.setup()
    settings = settings_mod.load()
    if args.command == "feature-server":
        port = args.port or urlparse(settings.feature_server_url).port or 6566
        chosen = replace(flags, workers=args.workers, keep_alive_timeout=args.keep_alive_timeout,
                         registry_ttl_sec=args.registry_ttl_sec, metrics=args.metrics)
        feature_server.serve(settings, args.host, port, chosen)
    else:
        from serving import api as api_mod  # FastAPI, the model and its libraries: only this command

        api_mod.serve(settings, args.host, args.port or settings.api_port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
