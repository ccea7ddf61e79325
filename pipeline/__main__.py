"""`python -m pipeline demo`: the nightly job end to end, as Airflow runs it, on this machine.

Generates a synthetic HR history into the inbox when it is empty, then runs the nightly DAG
`hr_feature_pipeline` in-process (Airflow's `dag.test()`, metadata in a local SQLite DB) on the
current configuration: keep raw -> validate -> features -> validate -> publish -> feast apply ->
materialize-incremental -> online store checks. It ends by printing one employee's online feature
vector in the feature service's declared order.
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
from pipeline import steps


def demo(inbox: Path, employees: int, months: int, employee_id: int | None) -> int:
    settings = settings_mod.load()
    started = time.perf_counter()
    today = datetime.now(timezone.utc).date()
    if not steps.list_exports(settings, str(inbox)):
        print(f"[1/4] generating {months} monthly HR exports for ~{employees} employees into {inbox}")
        gen.generate(inbox, employees, months, gen.previous_month_end(today))
    else:
        print(f"[1/4] using the HR exports already in {inbox}")

    from orchestration import local_airflow  # sets Airflow's environment before Airflow is imported

    local_airflow.configure(settings)
    print(f"[2/4] Airflow metadata DB in {settings.local_dir / 'airflow'}")
    local_airflow.ensure_metadata_db()
    print("[3/4] running DAG hr_feature_pipeline (nightly job) in-process")
    run_id, state = local_airflow.run_dag("hr_feature_pipeline", conf={"inbox": str(inbox.resolve())})
    for task_id, task_state in local_airflow.task_states("hr_feature_pipeline", run_id).items():
        print(f"      {task_id:28} {task_state}")
    print(f"      run {run_id}: {state}")
    if state != "success":
        print(f"the nightly run did not succeed; task logs: {settings.local_dir / 'airflow' / 'logs'}", file=sys.stderr)
        return 1

    from features import online
    from features import store as fs

    store = fs.open_store(settings)
    roster = online.served_roster(settings)
    chosen = employee_id if employee_id is not None else roster.active_ids()[0]
    refs = online.served_refs(store, settings)
    vector = online.online_vectors(store, settings, [chosen], refs=refs, roster=roster)[chosen]
    print(f"[4/4] online feature vector of employee {chosen} ({online.FEATURE_SERVICE}, in the model's order):")
    print(json.dumps(dict(zip(online.names_of(refs), vector)), indent=2))
    print(f"done in {time.perf_counter() - started:.1f}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run the nightly job once, end to end, and show its result")
    d.add_argument("--inbox", type=Path, default=Path("data/exports"), help="folder of HR exports")
    d.add_argument("--employees", type=int, default=2000)
    d.add_argument("--months", type=int, default=36)
    d.add_argument("--employee-id", type=int, default=None, help="whose vector to show (default: first active)")
    args = parser.parse_args(argv)
    logsetup.setup("WARNING")
    return demo(args.inbox, args.employees, args.months, args.employee_id)


if __name__ == "__main__":
    sys.exit(main())
