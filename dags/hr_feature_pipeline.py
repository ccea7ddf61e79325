"""
### HR feature pipeline (nightly)

Turns the HR exports that arrived since the last run into served features, every night at 02:00 UTC:

1. **plan_exports**: every `hr_export_YYYY-MM-DD.csv` in the inbox dated after the newest published
   extraction and on or before the run's date, oldest first: after skipped nights, the exports in
   between are published too (their leavers would otherwise be labelled as stayers). With none newer
   (a re-run), the newest export again; with the *extraction_date* parameter, exactly that one;
2. **ingest_exports**: each planned export, oldest first, through the one ingest sequence
   (`pipeline.ingest.ingest`, the same as the backfill's and `python -m pipeline ingest`): the export is kept
   under the raw prefix as received; Great Expectations suite `raw_hr_export`; the six features are
   computed and staged; suite `employee_features`; the staged partition is published in one
   server-side copy, under the date's lease. A failing batch is quarantined with the reason and stops
   the run at that export (the older ones stay published; nothing newer is published before it);
3. **apply_definitions**: `feast apply`, only when the definitions changed (watermarks are kept);
4. **materialize_incremental**: `python -m features materialize-incremental` in a worker pod
   (KubernetesPodOperator) or a local subprocess, per `FP_RUNNER`; the oldest extraction just
   published is refreshed explicitly too, so a re-run or a correction of an already-loaded date
   reaches Redis; leavers are removed from Redis;
5. **check_online_store**: freshness, coverage and eviction checks on Redis;
6. **check_training_serving_skew**: for every active employee (a random sample seeded by the run
   above 100,000), the online values and event times must equal the offline point-in-time ones, exactly;
7. **announce_fresh_features**: updates the `employee_features` Asset, which triggers training.

A run that does not finish within `FP_PIPELINE_DEADLINE_HOURS` (default 4) of being queued raises a
Deadline Alert; every task failure after its last retry raises an alert too (see `orchestration.alerts`).
Trigger it from the UI with the form to re-run a given extraction date.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk.exceptions import AirflowFailException
from airflow.sdk import (
    AsyncCallback,
    DeadlineAlert,
    DeadlineReference,
    Param,
    dag,
    get_current_context,
    task,
)

from core import settings as settings_mod
from orchestration import alerts
from orchestration.dag_defaults import default_args, features_asset
from orchestration.worker import worker_task

SETTINGS = settings_mod.load()
FEATURES_ASSET = features_asset(SETTINGS)
DEADLINE_HOURS = float(settings_mod.raw("FP_PIPELINE_DEADLINE_HOURS"))
DEFAULT_INBOX = settings_mod.raw("FP_INBOX")


def _fail_without_retry(message: str):
    """Bad data does not get better by retrying: fail the task at once, with the reason."""
    raise AirflowFailException(message)


@dag(
    dag_id="hr_feature_pipeline",
    schedule="0 2 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["features", "hr", "nightly"],
    owner_links={"people-analytics-platform": "https://github.com/hr-feature-platform"},
    default_args=default_args(timeout=timedelta(hours=1), retries=3, retry_delay=timedelta(minutes=2),
                              max_retry_delay=timedelta(minutes=30)),
    deadline=DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(hours=DEADLINE_HOURS),
        callback=AsyncCallback(alerts.deadline_missed,
                               kwargs={"dag_id": "hr_feature_pipeline", "deadline": f"{DEADLINE_HOURS:g}h after queued"}),
    ),
    params={
        "extraction_date": Param(None, type=["null", "string"], format="date", title="Extraction date",
                                 description="Ingest exactly the export of this date. Empty: every export newer "
                                             "than the last published one, up to the run's date, oldest first."),
        "inbox": Param(DEFAULT_INBOX, type="string", title="Inbox",
                       description="Folder or s3:// prefix holding hr_export_YYYY-MM-DD.csv files."),
        "apply_definitions": Param("auto", type="string", enum=["auto", "always", "never"], title="feast apply",
                                   description="auto: only when the feature definitions changed."),
        "row_count_tolerance_pct": Param(25, type="integer", minimum=1, maximum=90, title="Row count tolerance (%)",
                                         description="Allowed change in rows versus the previous extraction."),
        "run_health_checks": Param(True, type="boolean", title="Online store health checks",
                                   description="Check freshness, coverage and evictions in Redis after loading."),
    },
    render_template_as_native_obj=False,
)
def hr_feature_pipeline():
    @task
    def plan_exports() -> list[dict]:
        from datetime import date

        from pipeline import steps

        context = get_current_context()
        params = context["params"]
        chosen = date.fromisoformat(params["extraction_date"]) if params.get("extraction_date") else None
        try:
            planned = steps.pending_exports(settings_mod.load(), params["inbox"],
                                            chosen or context["dag_run"].run_after.date(), chosen)
        except (steps.InboxNotAllowed, steps.NoExportError) as exc:
            _fail_without_retry(str(exc))
        for as_of, source in planned:
            print(f"planned: the export of {as_of} ({source})")
        return [{"as_of": as_of.isoformat(), "source": source} for as_of, source in planned]

    @task
    def ingest_exports(planned: list[dict]) -> list[str]:
        from datetime import date

        from pipeline import ingest
        from etl.schema import ContractError
        from expectations.gate import ValidationFailed

        params = get_current_context()["params"]
        settings = settings_mod.load()
        published = []
        for done, export in enumerate(planned, 1):
            print(f"ingesting {done}/{len(planned)}: the export of {export['as_of']}")
            try:
                result = ingest.ingest(settings, export["source"], date.fromisoformat(export["as_of"]),
                                       row_tolerance=params["row_count_tolerance_pct"] / 100)
            except (ValidationFailed, ContractError) as exc:
                done_note = f" (published before it: {', '.join(published)})" if published else ""
                _fail_without_retry(f"the export of {export['as_of']} was rejected{done_note}: {exc}")
            print(result.summary())
            published.append(export["as_of"])
        return published

    @task
    def apply_definitions() -> list[str]:
        from features import store as fs

        mode = get_current_context()["params"]["apply_definitions"]
        if mode == "never":
            return []
        settings = settings_mod.load()
        return fs.apply(fs.open_store(settings), settings, only_if_changed=(mode == "auto"))

    materialize = worker_task(
        "materialize_incremental",
        ["python", "-m", "features", "materialize-incremental", "{{ dag_run.run_after.isoformat() }}",
         "--refresh-extraction", "{{ ti.xcom_pull(task_ids='plan_exports')[0]['as_of'] }}"],
        SETTINGS,
    )

    @task
    def check_online_store() -> dict:
        from monitoring import health

        params = get_current_context()["params"]
        if not params["run_health_checks"]:
            return {"skipped": True}
        report = health.check(settings_mod.load())
        print(report.text())
        if not report.healthy:
            raise RuntimeError(f"online store unhealthy: {'; '.join(report.problems)}")
        return report.summary()

    @task
    def check_training_serving_skew() -> dict:
        from features import store as fs
        from training import model

        import zlib

        settings = settings_mod.load()
        seed = zlib.crc32(get_current_context()["run_id"].encode())
        report = model.skew_check(fs.open_store(settings), settings, seed=seed)
        for line in report.mismatches[:50]:
            print(f"SKEW {line}")
        print(report.summary())
        if report.mismatches:
            _fail_without_retry(f"{report.summary()}; e.g. {report.mismatches[0]}")
        return {"mismatches": 0, "checked": report.checked, "extraction": report.extraction}

    @task(outlets=[FEATURES_ASSET])
    def announce_fresh_features(published: list[str]) -> list[str]:
        return published

    published = ingest_exports(plan_exports())
    applied = apply_definitions()
    published >> applied >> materialize
    health = check_online_store()
    materialize >> health
    skew = check_training_serving_skew()
    done = announce_fresh_features(published)
    health >> skew >> done


hr_feature_pipeline_dag = hr_feature_pipeline()
