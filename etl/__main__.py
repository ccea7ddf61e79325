"""`python -m etl`: generate synthetic HR exports, or ingest one export into the features dataset.

    python -m etl generate --out data/exports --employees 2000 --months 36
    python -m etl ingest data/exports/hr_export_2026-10-31.csv --as-of 2026-10-31
    python -m etl describe

Exit status: 0 done, 1 rejected by validation (quarantined; the message names file, column and
rule and where the report is), 2 unreadable export or bad arguments, 3 storage unreachable or refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date, datetime, timezone
from pathlib import Path

from core import log as logsetup
from core import settings as settings_mod
from core.lease import Busy, LeaseLost
from core.s3 import StorageError
from etl import features
from etl import generate as gen
from etl import ingest as ing
from etl.schema import ContractError
from expectations.gate import ValidationFailed


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
    i = sub.add_parser("ingest", help="keep a raw export and publish its features partition")
    i.add_argument("export", help="local CSV path or s3:// URI")
    i.add_argument("--as-of", type=_date, required=True, help="extraction date, YYYY-MM-DD (UTC)")
    i.add_argument("--json", action="store_true", help="print the result as JSON")
    i.add_argument("--no-validate", action="store_true", help="skip the raw suite (a file already checked; benchmarks); the features suite always runs")
    sub.add_parser("describe", help="print the feature definitions as a Markdown table, then their fingerprints")
    args = parser.parse_args(argv)
    logsetup.setup()

    if args.command == "describe":
        print(features.markdown_table())
        print("\nfingerprints of the code that computes them (etl/features.py):")
        for name, value in features.fingerprints().items():
            print(f"  {name:22} {value}")
        return 0

    if args.command == "generate":
        end = args.end or gen.previous_month_end(datetime.now(timezone.utc).date())
        started = time.perf_counter()
        paths = gen.generate(args.out, args.employees, args.months, end, args.seed)
        print(f"generated {len(paths)} exports ({paths[0].name} .. {paths[-1].name}) in {args.out} "
              f"in {time.perf_counter() - started:.1f}s")
        return 0

    settings = settings_mod.load()
    try:
        result = ing.ingest(settings, args.export, args.as_of, validate=not args.no_validate)
    except ValidationFailed as exc:
        print(f"error: rejected by validation, nothing published for {args.as_of}\n{exc}", file=sys.stderr)
        return 1
    except (ContractError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StorageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (Busy, LeaseLost) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 4
    print(json.dumps(result.as_dict(), indent=2) if args.json else result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
