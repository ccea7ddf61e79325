"""`python -m etl`: generate synthetic HR exports, or describe the features.

    python -m etl generate --out data/exports --employees 2000 --months 36
    python -m etl describe

Ingesting an export (keep, validate, compute, publish) is a pipeline step: `python -m pipeline ingest`.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import date, datetime, timezone
from pathlib import Path

from core import log as logsetup
from etl import spec
from etl import generate as gen


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}") from None


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m etl", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="write synthetic monthly exports in the raw contract's format")
    g.add_argument("--out", type=Path, default=Path("data/exports"), help="folder for the CSV files")
    g.add_argument("--employees", type=_positive, default=2000, help="workforce size (default 2000)")
    g.add_argument("--months", type=_positive, default=36, help="number of monthly exports (default 36)")
    g.add_argument("--end", type=_date, default=None, help="last extraction date's month (default: last month)")
    g.add_argument("--seed", type=int, default=7)
    sub.add_parser("describe", help="print the feature definitions as a Markdown table, then their fingerprints")
    args = parser.parse_args(argv)
    logsetup.setup()

    if args.command == "describe":
        print(spec.markdown_table())
        print("\nfingerprints of the code that computes them (etl/spec.py):")
        for name, value in spec.fingerprints().items():
            print(f"  {name:22} {value}")
        return 0

    end = args.end or gen.previous_month_end(datetime.now(timezone.utc).date())
    started = time.perf_counter()
    paths = gen.generate(args.out, args.employees, args.months, end, args.seed)
    print(f"generated {len(paths)} exports ({paths[0].name} .. {paths[-1].name}) in {args.out} "
          f"in {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
