"""
### HR feature pipeline (nightly)

Turns the newest HR export into served features, every night at 02:00 UTC:

1. **find_export**: the newest `hr_export_YYYY-MM-DD.csv` in the inbox on or before the run's date
   (or the one the *extraction_date* parameter names);
2. **keep_raw**: the export is stored under the raw prefix as received, never modified;
3. **validate_raw**: Great Expectations suite `raw_hr_export`; a failure quarantines the batch and stops the run;
4. **stage_features**: the six features are computed and staged;
5. **validate_features**: suite `employee_features`; a failure quarantines the batch and stops the run;
6. **publish_features**: the staged partition becomes visible to readers in one server-side copy;
7. **apply_definitions**: `feast apply`, only when the definitions changed (watermarks are kept);
8. **materialize_incremental**: `python -m features materialize-incremental` in a worker pod
   (KubernetesPodOperator) or a local subprocess, per `FP_RUNNER`; the extraction just published is
   refreshed explicitly too, so a re-run or a correction of an already-loaded date reaches Redis;
   leavers are removed from Redis;
9. **check_online_store**: freshness, coverage and eviction checks on Redis;
10. **check_training_serving_skew**: for every active employee (a random sample seeded by the run
    above 100,000), the online values and event times must equal the offline point-in-time ones, exactly;
11. **announce_fresh_features**: updates the `employee_features` Asset, which triggers training.

A run that does not finish within `FP_PIPELINE_DEADLINE_HOURS` (default 4) of being queued raises a
Deadline Alert; every task failure after its last retry raises an alert too (see `orchestration.alerts`).
Trigger it from the UI with the form to re-run a given extraction date.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk.exceptions import AirflowFailException
from airflow.sdk import (
    Asset,
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
from orchestration.worker import worker_task

SETTINGS = settings_mod.load()
FEATURES_ASSET = Asset(name="employee_features", uri=SETTINGS.features_uri, group="feature-store")
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
    default_args={
        # A hung dependency (S3, Redis, the registry) fails the task instead of holding the run forever.
        "execution_timeout": timedelta(hours=1),
        "owner": "people-analytics-platform",
        "retries": 3,
        "retry_delay": timedelta(minutes=2),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=30),
        "on_failure_callback": alerts.AlertNotifier(),
    },
    deadline=DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(hours=DEADLINE_HOURS),
        callback=AsyncCallback(alerts.deadline_missed,
                               kwargs={"dag_id": "hr_feature_pipeline", "deadline": f"{DEADLINE_HOURS:g}h after queued"}),
    ),
    params={
        "extraction_date": Param(None, type=["null", "string"], format="date", title="Extraction date",
                                 description="Ingest the export of this date. Empty: the newest export on or "
                                             "before the run's date."),
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
    def find_export() -> dict:
        from datetime import date

        from pipeline import steps

        context = get_current_context()
        params = context["params"]
        settings = settings_mod.load()
        run_date = context["dag_run"].run_after.date()
        if params.get("extraction_date"):
            run_date = date.fromisoformat(params["extraction_date"])
        try:
            as_of, source = steps.find_export(settings, params["inbox"], run_date)
        except steps.InboxNotAllowed as exc:
            _fail_without_retry(str(exc))
        if params.get("extraction_date") and as_of != run_date:
            _fail_without_retry(f"no export dated {run_date} in {params['inbox']} (newest before it: {as_of})")
        return {"as_of": as_of.isoformat(), "source": source}

    @task
    def keep_raw(export: dict) -> dict:
        from datetime import date

        from core import s3
        from etl import ingest

        settings = settings_mod.load()
        data, name = s3.read_source(settings, export["source"])
        uri, already = ingest.keep_raw(settings, date.fromisoformat(export["as_of"]), data, name)
        return {**export, "raw_uri": uri, "raw_already_kept": already}

    def _validate(suite: str, export: dict, uri: str) -> dict:
        from datetime import date

        from expectations import gate

        params = get_current_context()["params"]
        # The raw export is already kept at its raw/ key: the quarantine points at it, no second copy.
        outcome = gate.validate(settings_mod.load(), suite, uri, as_of=date.fromisoformat(export["as_of"]),
                                row_tolerance=params["row_count_tolerance_pct"] / 100,
                                kept_at=uri if suite == "raw" else None)
        print(outcome.message())
        if not outcome.passed:
            _fail_without_retry(outcome.message())
        return {"passed": True, "rows": outcome.rows, "warnings": len(outcome.warnings), "report": outcome.report_uri}

    @task
    def validate_raw(export: dict) -> dict:
        return _validate("raw", export, export["raw_uri"])

    @task
    def stage_features(export: dict) -> dict:
        from datetime import date

        from core import s3
        from etl import ingest

        settings = settings_mod.load()
        data, _ = s3.read_source(settings, export["raw_uri"])
        table, _, staged = ingest.stage_features(settings, data, export["raw_uri"], date.fromisoformat(export["as_of"]))
        return {**export, "staged_uri": staged, "rows": table.num_rows}

    @task
    def validate_features(staged: dict) -> dict:
        return _validate("features", staged, staged["staged_uri"])

    @task
    def publish_features(staged: dict) -> str:
        from datetime import date

        from etl import ingest

        return ingest.publish_exclusively(settings_mod.load(), date.fromisoformat(staged["as_of"]), staged["staged_uri"])

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
         "--refresh-extraction", "{{ ti.xcom_pull(task_ids='find_export')['as_of'] }}"],
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
    def announce_fresh_features(published: str) -> str:
        return published

    export = keep_raw(find_export())
    raw_ok = validate_raw(export)
    staged = stage_features(export)
    raw_ok >> staged
    features_ok = validate_features(staged)
    published = publish_features(staged)
    features_ok >> published
    applied = apply_definitions()
    published >> applied >> materialize
    health = check_online_store()
    materialize >> health
    skew = check_training_serving_skew()
    done = announce_fresh_features(published)
    health >> skew >> done


hr_feature_pipeline_dag = hr_feature_pipeline()
