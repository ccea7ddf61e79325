"""
### Feature backfill (from the UI)

Re-ingests and re-materializes a range of extraction dates, safely and idempotently:

1. **plan**: the exports in the inbox dated within [*start_date*, *end_date*] (empty: from the inbox's
   first export to its last);
2. **reingest** (one mapped task per export, when *reingest* is on): keep raw, validate, publish,
   exactly as the nightly pipeline does; re-running a date replaces its partition;
3. **apply_definitions**: `feast apply`, only when the feature definitions changed (on a fresh
   registry, the first backfill registers them);
4. **materialize_window**: `python -m features materialize START END` over the event-time window.

Why not `materialize-incremental`: incremental windows are on event time, so a row that lands for
an already-materialized window never reaches Redis that way. The explicit window does, and it
never puts older values over newer ones: Feast skips rows older than what Redis holds, and rows of
a corrected extraction replace exactly the values that came from that same extraction.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from core import settings as settings_mod
from orchestration.dag_defaults import default_args
from orchestration.worker import worker_task

DEFAULT_INBOX = settings_mod.raw("FP_INBOX")


@dag(
    dag_id="feature_backfill",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["features", "hr", "backfill"],
    default_args=default_args(timeout=timedelta(hours=2), retries=2, retry_delay=timedelta(minutes=1)),
    params={
        "start_date": Param(None, type=["null", "string"], format="date", title="First extraction date",
                            description="First extraction date of the window (inclusive); empty: the inbox's "
                                        "first export."),
        "end_date": Param(None, type=["null", "string"], format="date", title="Last extraction date",
                          description="Last extraction date of the window (inclusive); empty: the inbox's "
                                      "last export."),
        "inbox": Param(DEFAULT_INBOX, type="string", title="Inbox",
                       description="Folder or s3:// prefix holding hr_export_YYYY-MM-DD.csv files."),
        "reingest": Param(True, type="boolean", title="Re-ingest exports",
                          description="Validate and republish every export in the window before loading."),
        "max_exports": Param(120, type="integer", minimum=1, maximum=1000, title="Most exports",
                             description="Refuse windows holding more exports than this (a typo guard)."),
    },
)
def feature_backfill():
    @task
    def plan() -> dict:
        from pipeline import steps

        params = get_current_context()["params"]
        settings = settings_mod.load()
        try:
            found = steps.list_exports(settings, params["inbox"])
            start, end = steps.backfill_window(found, params["start_date"], params["end_date"])
        except (steps.InboxNotAllowed, steps.NoExportError, ValueError) as exc:
            raise AirflowFailException(str(exc)) from None  # a wrong location or window does not get better by retrying
        exports = [{"as_of": d.isoformat(), "source": p} for d, p in found.items() if start <= d <= end]
        if len(exports) > params["max_exports"]:
            raise ValueError(f"{len(exports)} exports in the window, more than max_exports={params['max_exports']}")
        return {"exports": exports if params["reingest"] else [], "window_start": start.isoformat(),
                "window_end": (end + timedelta(days=1)).isoformat()}

    @task
    def exports_of(planned: dict) -> list[dict]:
        return planned["exports"]

    @task(max_active_tis_per_dagrun=2)
    def reingest(export: dict) -> str:
        from pipeline import ingest

        result = ingest.ingest(settings_mod.load(), export["source"], date.fromisoformat(export["as_of"]))
        print(result.summary())
        return result.features_uri

    @task(trigger_rule="none_failed")
    def apply_definitions() -> list[str]:
        from features import store as fs
        from features.resources import Resources

        return fs.apply(Resources.for_process(), only_if_changed=True)

    planned = plan()
    loaded = reingest.expand(export=exports_of(planned))
    materialize = worker_task(
        "materialize_window",
        ["python", "-m", "features", "materialize",
         "{{ ti.xcom_pull(task_ids='plan')['window_start'] }}", "{{ ti.xcom_pull(task_ids='plan')['window_end'] }}"],
        settings_mod.load(),
        trigger_rule="none_failed",
    )
    loaded >> apply_definitions() >> materialize


feature_backfill_dag = feature_backfill()
