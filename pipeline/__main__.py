"""`python -m pipeline demo`: the nightly job end to end on the current configuration.

Generates a synthetic HR history into the inbox when it is empty, then for the latest export:
ingest (raw kept, features published) -> feast apply -> materialize-incremental -> print one
employee's online feature vector in the feature service's declared order.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from core import log as logsetup
from core import settings as settings_mod
from etl import generate as gen
from etl import ingest as ing
from features import store as fs
from pipeline import steps


def demo(inbox: Path, employees: int, months: int, employee_id: int | None) -> int:
    settings = settings_mod.load()
    started = time.perf_counter()
    today = datetime.now(timezone.utc).date()
    if not steps.list_exports(settings, str(inbox)):
        print(f"[1/5] generating {months} monthly HR exports for ~{employees} employees into {inbox}")
        gen.generate(inbox, employees, months, gen.previous_month_end(today))
    else:
        print(f"[1/5] using the HR exports already in {inbox}")
    as_of, export = steps.find_export(settings, str(inbox), today)
    print(f"[2/5] ingesting {export}")
    result = ing.ingest(settings, export, as_of)
    print("      " + result.summary().replace("\n", "\n      "))
    store = fs.open_store(settings)
    print("[3/5] feast apply")
    fs.apply(store, settings)
    print("[4/5] feast materialize-incremental")
    materialized = fs.materialize(store, settings, datetime.now(timezone.utc))
    print("      " + materialized.summary())
    partition = ing.read_partition(settings, as_of)
    active_ids = partition.filter(partition["is_active"])["employee_id"].to_pylist()
    chosen = employee_id if employee_id is not None else active_ids[0]
    vector = fs.online_vectors(store, [chosen])[chosen]
    names = [r.split(":", 1)[1] for r in fs.feature_refs(store)]
    print(f"[5/5] online feature vector of employee {chosen} ({fs.FEATURE_SERVICE}, in declared order):")
    print(json.dumps(dict(zip(names, vector)), indent=2))
    print(f"done in {time.perf_counter() - started:.1f}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run the nightly job once, end to end, and show its result")
    d.add_argument("--inbox", type=Path, default=Path("data/exports"), help="folder of HR exports")
    d.add_argument("--employees", type=int, default=2000)
    d.add_argument("--months", type=int, default=36)
    d.add_argument("--employee-id", type=int, default=None, help="whose vector to show (default: first active)")
    args = parser.parse_args(argv)
    logsetup.setup()
    return demo(args.inbox, args.employees, args.months, args.employee_id)


if __name__ == "__main__":
    sys.exit(main())
