"""`python -m expectations validate --suite {raw,features} <file or s3 uri>`

Validates a raw HR export or a features partition. Exit status: 0 pass, 1 fail (the batch is
quarantined with reason.json unless --no-quarantine), 2 usage or unreadable input. Prints which
rules broke (file, column, rule, rows, sample values) and where the Data Docs report is.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date

from core import log as logsetup
from core import settings as settings_mod
from core.s3 import StorageError
from expectations import gate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m expectations", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="validate one batch")
    v.add_argument("--suite", choices=sorted(gate.SUITES), required=True)
    v.add_argument("batch", help="local file or s3:// URI")
    v.add_argument("--as-of", type=date.fromisoformat, default=None,
                   help="extraction date (default: from the file name or extraction_date= in the path)")
    v.add_argument("--previous-rows", type=int, default=None,
                   help="row count of the previous extraction (default: read from the published partitions)")
    v.add_argument("--row-tolerance", type=float, default=0.25, help="allowed relative change in row count (0.25)")
    v.add_argument("--no-quarantine", action="store_true", help="report only; do not copy a failing batch")
    v.add_argument("--json", action="store_true", help="print the outcome as JSON")
    args = parser.parse_args(argv)
    logsetup.setup("WARNING")
    settings = settings_mod.load()
    try:
        outcome = gate.validate(settings, args.suite, args.batch, as_of=args.as_of, previous_rows=args.previous_rows,
                                row_tolerance=args.row_tolerance, quarantine=not args.no_quarantine)
    except (FileNotFoundError, StorageError, gate.UnreadableBatch) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(outcome.as_dict(), indent=2, default=str) if args.json else outcome.message())
    return 0 if outcome.passed else 1


if __name__ == "__main__":
    sys.exit(main())
