"""`python -m monitoring health [--json]`: is what Redis serves fresh, complete and not evicted?

Exit status: 0 healthy, 1 unhealthy or Redis unreachable (the message says which). Run by the
nightly DAG after materialization, and on demand.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta
from pathlib import Path

from core import log as logsetup
from core import settings as settings_mod
from monitoring import health


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("health", help="check the online store's health")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.add_argument("--sample", type=int, default=None, help="read the timestamps of N entities (default: all)")
    c.add_argument("--max-staleness-hours", type=float, default=None,
                   help="allowed age of served values (default: the feature view's TTL)")
    c.add_argument("--coverage-tolerance", type=float, default=0.0,
                   help="share of active employees allowed to be missing online (default 0)")
    c.add_argument("--metrics-file", type=Path, default=None,
                   help="also write Prometheus metrics here (node-exporter textfile collector format)")
    args = parser.parse_args(argv)
    logsetup.setup("WARNING")
    settings = settings_mod.load()
    try:
        report = health.check(settings, sample=args.sample, coverage_tolerance=args.coverage_tolerance,
                              max_staleness=timedelta(hours=args.max_staleness_hours) if args.max_staleness_hours else None)
    except health.RedisUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.metrics_file:
        tmp = args.metrics_file.with_suffix(".tmp")
        tmp.write_text(health.prometheus_text(report, settings.feast_project))
        tmp.replace(args.metrics_file)  # the collector never reads a half-written file
    print(json.dumps(report.summary(), indent=2) if args.json else report.text())
    return 0 if report.healthy else 1


if __name__ == "__main__":
    sys.exit(main())
