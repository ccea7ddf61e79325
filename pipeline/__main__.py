"""`python -m pipeline`: ingest one export, or run the whole system once, end to end.

    python -m pipeline ingest data/exports/hr_export_2026-10-31.csv --as-of 2026-10-31
    python -m pipeline demo

`ingest` keeps the raw export, validates it, computes the features, validates them and publishes
the partition (pipeline.ingest, in the order of pipeline/sequence.py: the backfill DAG runs the same
function, the nightly DAG each step as a task of its own).
Exit status: 0 done, 1 rejected by validation (quarantined; the message names file, column and
rule and where the report is), 2 unreadable export or bad arguments, 3 storage unreachable or
refused, 4 another run of that date is in progress (nothing done).

`demo` runs the whole system on this machine, as Airflow runs it:

1. synthetic HR history into the inbox when it is empty (36 monthly exports);
2. `feature_backfill` publishes and loads every export but the newest (history);
3. `hr_feature_pipeline`, the nightly job, publishes the newest export and loads it into Redis;
4. `attrition_training`, which the nightly run's Asset triggers in production, trains and promotes
   a model on point-in-time correct history;
5. the serving stack (`make serve`): the read-only feature server and the inference API;
6. one active employee's prediction, fetched over HTTP from the API as an HR application would.

The DAGs run in this process (Airflow's `dag.test()`, metadata in `.local/airflow/`); heavy steps
run as the same subprocess commands a worker pod runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from datetime import date, datetime, timezone
from pathlib import Path

from core import log as logsetup
from core import settings as settings_mod
from core.lease import Busy, LeaseLost
from core.s3 import StorageError
from etl import generate as gen
from etl.schema import ContractError
from expectations.gate import ValidationFailed
from pipeline import ingest as ing
from pipeline import steps

STEPS = 6


def _run(local_airflow, settings, step: int, dag_id: str, what: str, conf: dict) -> bool:
    started = time.perf_counter()
    print(f"[{step}/{STEPS}] {what}: DAG {dag_id}", flush=True)
    run_id, state = local_airflow.run_dag(dag_id, conf=conf)
    for task_id, task_state in local_airflow.task_states(dag_id, run_id).items():
        print(f"      {task_id:28} {task_state}")
    print(f"      run {run_id}: {state} in {time.perf_counter() - started:.0f}s", flush=True)
    if state != "success":
        print(f"{dag_id} did not succeed; task logs: {settings.local_dir / 'airflow' / 'logs'}", file=sys.stderr)
    return state == "success"


def demo(inbox: Path, employees: int, months: int, employee_id: int | None) -> int:
    settings = settings_mod.load()
    started = time.perf_counter()
    today = datetime.now(timezone.utc).date()
    exports = steps.list_exports(settings, str(inbox))
    if not exports:
        print(f"[1/{STEPS}] generating {months} monthly HR exports for ~{employees} employees into {inbox}", flush=True)
        gen.generate(inbox, employees, months, gen.previous_month_end(today))
        exports = steps.list_exports(settings, str(inbox))
    else:
        print(f"[1/{STEPS}] using the {len(exports)} HR exports already in {inbox}")
    dates = sorted(exports)

    from orchestration import local_airflow  # sets Airflow's environment before Airflow is imported

    local_airflow.configure(settings)
    local_airflow.ensure_metadata_db()
    inbox_conf = str(inbox.resolve())
    if len(dates) > 1 and not _run(local_airflow, settings, 2, "feature_backfill",
                                   f"history: {len(dates) - 1} exports, {dates[0]} .. {dates[-2]}",
                                   {"start_date": dates[0].isoformat(), "end_date": dates[-2].isoformat(),
                                    "inbox": inbox_conf, "reingest": True, "max_exports": 1000}):
        return 1
    if not _run(local_airflow, settings, 3, "hr_feature_pipeline", f"the nightly job, export of {dates[-1]}",
                {"inbox": inbox_conf}):
        return 1
    if not _run(local_airflow, settings, 4, "attrition_training", "training on the fresh features", {}):
        return 1

    import devstack
    from features import online
    from serving import token
    from training import model

    print(f"[5/{STEPS}] serving: feature server {settings.feature_server_url}, inference API on port "
          f"{settings.api_port}", flush=True)
    for status in devstack.up_serving(settings):
        print(f"      {status.name:16} {status.url}  ({status.detail})")
    chosen = employee_id if employee_id is not None else online.served_roster(settings).active_ids()[0]
    url = f"http://127.0.0.1:{settings.api_port}/v1/employees/{chosen}/attrition"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token.resolve(settings)}"})
    deadline = time.monotonic() + 60
    while True:  # the API picks up the newly promoted model within FP_API_REFRESH_SECONDS
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                answer = json.loads(response.read())
            break
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            if exc.code != 503 or time.monotonic() > deadline:
                print(f"the inference API answered {exc.code}: {body}", file=sys.stderr)
                return 1
            time.sleep(2)
    pointer_auc = model.load_latest(settings).roc_auc
    print(f"[6/{STEPS}] GET {url}")
    print(json.dumps({**answer, "model_roc_auc_on_later_extractions": round(pointer_auc, 3)}, indent=2))
    print(f"done in {time.perf_counter() - started:.0f}s; the API and the feature server keep running "
          f"(`make down` stops them); try it: curl -s -H \"Authorization: Bearer $(cat "
          f"{token.local_token_file(settings)})\" {url}")
    return 0


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}") from None


# Exit status of `ingest` per failure (the README's command-line contracts).
INGEST_EXIT = ((ContractError, 2), (FileNotFoundError, 2), (StorageError, 3), (Busy, 4), (LeaseLost, 4))


def ingest(export: str, as_of: date, validate: bool, as_json: bool) -> int:
    settings = settings_mod.load()
    try:
        result = ing.ingest(settings, export, as_of, validate=validate)
    except ValidationFailed as exc:
        print(f"error: rejected by validation, nothing published for {as_of}\n{exc}", file=sys.stderr)
        return 1
    except tuple(kind for kind, _ in INGEST_EXIT) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return next(status for kind, status in INGEST_EXIT if isinstance(exc, kind))
    print(json.dumps(result.as_dict(), indent=2) if as_json else result.summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    i = sub.add_parser("ingest", help="keep a raw export and publish its features partition")
    i.add_argument("export", help="local CSV path or s3:// URI")
    i.add_argument("--as-of", type=_date, required=True, help="extraction date, YYYY-MM-DD (UTC)")
    i.add_argument("--json", action="store_true", help="print the result as JSON")
    i.add_argument("--no-validate", action="store_true",
                   help="skip the raw suite (a file already checked; benchmarks); the features suite always runs")
    d = sub.add_parser("demo", help="history, the nightly job, training and a prediction over HTTP, end to end")
    d.add_argument("--inbox", type=Path, default=Path("data/exports"), help="folder of HR exports")
    d.add_argument("--employees", type=int, default=2000)
    d.add_argument("--months", type=int, default=36)
    d.add_argument("--employee-id", type=int, default=None, help="whose prediction to show (default: first active)")
    args = parser.parse_args(argv)
    if args.command == "ingest":
        logsetup.setup()
        return ingest(args.export, args.as_of, not args.no_validate, args.json)
    logsetup.setup("WARNING")
    return demo(args.inbox, args.employees, args.months, args.employee_id)


if __name__ == "__main__":
    sys.exit(main())
