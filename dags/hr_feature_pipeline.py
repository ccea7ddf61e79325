"""
### HR feature pipeline (nightly)

Turns the HR exports that arrived since the last run into served features, every night at 02:00 UTC:

1. **plan_exports**: every `hr_export_YYYY-MM-DD.csv` in the inbox dated after the newest published
   extraction and on or before the run's date, oldest first: after skipped nights, the exports in
   between are published too (their leavers would otherwise be labelled as stayers). With none newer
   (a re-run), the newest export again; with the *extraction_date* parameter, exactly that one;
2. the ingest steps, one task each, in the order of `pipeline.sequence.INGEST_STEPS` (the same
   steps the backfill and `python -m pipeline ingest` run in one process), each for every planned
   export, oldest first, with the export's date leased to this run from the first step to the last:
   **keep_raw** (the export as received, under the raw prefix), **validate_raw** (Great Expectations
   suite `raw_hr_export`), **stage_features** (the six features, staged), **validate_features**
   (suite `employee_features`), **publish** (one server-side copy). A batch the data rejects is
   quarantined with the reason and stops at that export: the older ones are still published,
   nothing newer is, and the run fails (at once when no older export is left to publish);
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
from pipeline.sequence import INGEST_STEPS

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

        from etl.schema import ContractError
        from pipeline import ingest, steps

        context = get_current_context()
        params = context["params"]
        chosen = date.fromisoformat(params["extraction_date"]) if params.get("extraction_date") else None
        settings = settings_mod.load()
        try:
            planned = steps.pending_exports(settings, params["inbox"], chosen or context["dag_run"].run_after.date(),
                                            chosen)
            batches = ingest.plan_batches(settings, planned, params["row_count_tolerance_pct"] / 100)
        except (steps.InboxNotAllowed, steps.NoExportError, ContractError) as exc:
            _fail_without_retry(str(exc))
        for as_of, source in planned:
            print(f"planned: the export of {as_of} ({source})")
        return batches

    def ingest_step(name: str):
        @task(task_id=name, doc_md=f"Ingest step `{name}` for every planned export, oldest first "
                                   "(`pipeline.ingest.run_step`).")
        def run(batches: list[dict]) -> list[dict]:
            from pipeline import ingest

            context = get_current_context()
            done = ingest.run_step(settings_mod.load(), name, batches, holder=f"{context['dag_run'].dag_id}/{context['run_id']}")
            for batch in done:
                print(ingest.Batch.from_dict(batch).progress(name))
            rejected = next((b for b in done if b["rejected"]), None)
            going_on = [b["as_of"] for b in done if not b["rejected"]]
            if rejected and (not going_on or name == INGEST_STEPS[-1]):
                published = f" (published before it: {', '.join(going_on)})" if going_on else ""
                _fail_without_retry(f"the export of {rejected['as_of']} was rejected{published}: {rejected['rejected']}")
            return done
        return run

    @task
    def apply_definitions() -> list[str]:
        from features import store as fs
        from features.resources import Resources

        mode = get_current_context()["params"]["apply_definitions"]
        if mode == "never":
            return []
        return fs.apply(Resources.for_process(), only_if_changed=(mode == "auto"))

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
        from features.resources import Resources
        from training import model

        import zlib

        seed = zlib.crc32(get_current_context()["run_id"].encode())
        report = model.skew_check(Resources.for_process(), seed=seed)
        for line in report.mismatches[:50]:
            print(f"SKEW {line}")
        print(report.summary())
        if report.mismatches:
            _fail_without_retry(f"{report.summary()}; e.g. {report.mismatches[0]}")
        return {"mismatches": 0, "checked": report.checked, "extraction": report.extraction}

    @task(outlets=[FEATURES_ASSET])
    def announce_fresh_features(published: list[dict]) -> list[str]:
        return [batch["as_of"] for batch in published]

    published = plan_exports()
    for name in INGEST_STEPS:
        published = ingest_step(name)(published)
    applied = apply_definitions()
    published >> applied >> materialize
    health = check_online_store()
    materialize >> health
    skew = check_training_serving_skew()
    done = announce_fresh_features(published)
    health >> skew >> done


hr_feature_pipeline_dag = hr_feature_pipeline()
