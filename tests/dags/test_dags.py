"""The Airflow DAGs: integrity, forms, where steps run, pod specs, and real in-process runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import kubernetes_validate
import pytest
from kubernetes.client import ApiClient

from helpers import ROOT
from core import settings as settings_mod
from orchestration import local_airflow
from deploy import validate as deploy_validate
from deploy.validate import TARGET_KUBERNETES_VERSION
from orchestration.worker import LocalCommandOperator, kubernetes_operator, worker_spec
from pipeline.sequence import INGEST_STEPS

DAG_FILES = sorted((ROOT / "dags").glob("*.py"))
HEAVY_MODULES = ("feast", "great_expectations", "pandas", "sklearn", "duckdb", "pyarrow.parquet", "s3fs", "dask")

PARSE_PROBE = """
import json, sys, time
from orchestration import local_airflow
from core import settings
local_airflow.configure(settings.load())
import airflow.sdk  # the DAG processor has Airflow loaded already
before = set(sys.modules)
started = time.perf_counter()
import importlib.util
spec = importlib.util.spec_from_file_location("dag_under_test", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
seconds = time.perf_counter() - started
from airflow.sdk import DAG
dags = [v for v in vars(module).values() if isinstance(v, DAG)]
print(json.dumps({"seconds": seconds, "dags": [d.dag_id for d in dags],
                  "heavy": sorted(m for m in set(sys.modules) - before if m.split(".")[0] in
                                  {h.split(".")[0] for h in %r} and m in %r)}))
""" % (HEAVY_MODULES, HEAVY_MODULES)


@pytest.fixture(scope="module")
def airflow_home():
    """The test session's Airflow home (set in conftest.pytest_configure), migrated."""
    local_airflow.ensure_metadata_db()
    return Path(os.environ["AIRFLOW_HOME"])


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_imports_without_secrets_or_heavy_modules(dag_file, tmp_path):
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("AWS_", "FP_", "AIRFLOW"))}
    clean["FP_LOCAL_DIR"] = str(tmp_path)  # no generated credentials either
    proc = subprocess.run([sys.executable, "-c", PARSE_PROBE, str(dag_file)], cwd=ROOT, env=clean,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["dags"], f"{dag_file.name} defines no DAG"
    assert result["heavy"] == [], f"{dag_file.name} imports {result['heavy']} at parse time (slow DAG parsing)"
    print(f"{dag_file.name}: parsed in {result['seconds'] * 1000:.0f} ms")


@pytest.fixture(scope="module")
def dags(airflow_home):
    return {dag_id: local_airflow.load_dag(dag_id)
            for dag_id in ("hr_feature_pipeline", "feature_backfill", "attrition_training")}


def test_nightly_dag_schedule_defaults_and_deadline(dags):
    from airflow.sdk import AsyncCallback, DeadlineAlert

    nightly = dags["hr_feature_pipeline"]
    assert nightly.timetable.expression == "0 2 * * *" and str(nightly.timetable.timezone) in {"UTC", "Timezone('UTC')"}
    assert nightly.catchup is False and nightly.max_active_runs == 1
    assert nightly.default_args["retries"] >= 1 and nightly.default_args["retry_exponential_backoff"]
    assert nightly.default_args["on_failure_callback"] is not None
    deadlines = nightly.deadline if isinstance(nightly.deadline, list) else [nightly.deadline]
    assert len(deadlines) == 1 and isinstance(deadlines[0], DeadlineAlert)
    assert isinstance(deadlines[0].callback, AsyncCallback)
    assert deadlines[0].callback.path == "orchestration.alerts.deadline_missed"
    assert list(nightly.task_dict) and "materialize_incremental" in nightly.task_dict
    assert nightly.task_dict["announce_fresh_features"].outlets[0].name == "employee_features"


@pytest.mark.parametrize("dag_id", ["hr_feature_pipeline", "feature_backfill", "attrition_training"])
def test_dag_documents_itself_and_has_a_form(dags, dag_id):
    dag = dags[dag_id]
    assert dag.doc_md and dag.doc_md.strip().startswith("###")
    assert dag.tags and dag.owner == "people-analytics-platform"
    params = dag.params
    assert params, "a UI form needs Params"
    for name in params:
        param = params.get_param(name)
        schema = param.schema
        assert schema.get("type"), f"{dag_id}.{name} has no type"
        assert schema.get("title") and param.description, f"{dag_id}.{name} needs a title and description"
        if schema.get("type") == "integer":
            assert "minimum" in schema and "maximum" in schema, f"{dag_id}.{name} is an unbounded integer"
    params.validate()  # the defaults are valid: a manual run with no input works
    for name in params:
        if "date" in name:
            assert params.get_param(name).schema.get("format") == "date", f"{name}: dates get a date picker"


@pytest.mark.parametrize("dag_id", ["hr_feature_pipeline", "feature_backfill", "attrition_training"])
def test_every_task_has_a_bounded_run_time(dags, dag_id):
    """A hung S3, Redis or registry becomes a failed task with a message, never a run that waits forever."""
    for task in dags[dag_id].tasks:
        assert task.execution_timeout is not None and task.execution_timeout.total_seconds() <= 4 * 3600, task.task_id


def test_training_follows_the_features_asset(dags):
    training = dags["attrition_training"]
    assert "employee_features" in str(training.timetable.asset_condition)
    assert "train_model" in training.task_dict


def _settings(**overrides):
    return replace(settings_mod.load(), **overrides)


def test_local_and_kubernetes_runs_are_the_same_command(dags):
    from airflow.sdk.definitions.context import Context

    settings = _settings(runner="kubernetes")
    argv = ["python", "-m", "features", "materialize-incremental", "{{ dag_run.run_after.isoformat() }}",
            "--refresh-extraction", "{{ params.day }}"]
    spec = worker_spec("materialize_incremental", argv, settings)
    local = LocalCommandOperator(task_id=spec.task_id, argv=spec.argv, env=spec.env)
    pod = kubernetes_operator(spec, settings)

    class Run:
        run_after = datetime(2026, 11, 24, 2, 0, tzinfo=timezone.utc)

    context = Context({"dag_run": Run(), "params": {"day": "2026-10-31"}})
    local_argv = local.render_template(local.argv, context)
    pod_argv = pod.render_template(pod.cmds, context) + pod.render_template(pod.arguments, context)
    assert local_argv == pod_argv == ["python", "-m", "features", "materialize-incremental", "2026-11-24T02:00:00+00:00",
                                      "--refresh-extraction", "2026-10-31"]
    assert local.env == {e.name: e.value for e in pod.env_vars}
    assert not any(k.startswith("AWS_") or k in {"FP_REDIS_URL", "FP_REGISTRY_URL"} for k in local.env), \
        "secrets travel in the Kubernetes Secret, never in the pod spec"


@pytest.mark.parametrize("task_id, argv", [
    ("materialize_incremental", ["python", "-m", "features", "materialize-incremental", "2026-11-24T02:00:00+00:00"]),
    ("materialize_window", ["python", "-m", "features", "materialize", "2026-01-01", "2026-11-01"]),
])
def test_rendered_pod_spec_validates_strictly(task_id, argv):
    settings = _settings(runner="kubernetes")
    pod = kubernetes_operator(worker_spec(task_id, argv, settings), settings).build_pod_request_obj(dry_run=True)
    manifest = ApiClient().sanitize_for_serialization(pod)
    kubernetes_validate.validate(manifest, TARGET_KUBERNETES_VERSION, strict=True)
    container = manifest["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert manifest["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["limits"]["memory"] and container["resources"]["requests"]["cpu"]
    assert ":" in container["image"] and not container["image"].endswith(":latest")
    assert container["command"] + container["args"] == argv
    assert manifest["spec"]["serviceAccountName"] == settings.k8s_service_account
    assert deploy_validate._mounts_ca(manifest["spec"]), "the CA that verifies Redis and registry TLS is mounted"
    policy = next(d for _, d in deploy_validate.manifests() if d["kind"] == "ValidatingAdmissionPolicy")
    assert container["image"].rsplit(":", 1)[0] in str(policy), "the admission policy admits the rendered image"


def test_a_typo_in_a_pod_spec_fails_validation():
    settings = _settings(runner="kubernetes")
    pod = kubernetes_operator(worker_spec("t", ["python"], settings), settings).build_pod_request_obj(dry_run=True)
    manifest = ApiClient().sanitize_for_serialization(pod)
    manifest["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, TARGET_KUBERNETES_VERSION, strict=True)


# --- real runs, in-process, against the local stack ------------------------------------------

@pytest.fixture(scope="module")
def nightly_env(stack, airflow_home, exports, tmp_path_factory):
    """The nightly DAG pointed at this session's bucket and project, with a 4-month inbox."""
    inbox = tmp_path_factory.mktemp("inbox")
    for path in exports[-4:]:
        (inbox / path.name).write_bytes(path.read_bytes())
    return inbox


@pytest.mark.integration
def test_nightly_dag_runs_green_end_to_end(stack, nightly_env, webhook, monkeypatch):
    monkeypatch.setenv("FP_ALERT_WEBHOOK_URL", webhook.url)  # so that "no alert" can fail
    run_id, state = local_airflow.run_dag("hr_feature_pipeline", conf={"inbox": str(nightly_env),
                                                                       "apply_definitions": "auto"})
    states = local_airflow.task_states("hr_feature_pipeline", run_id)
    assert state == "success", states
    assert set(states.values()) == {"success"}
    assert list(states)[:6] == ["plan_exports", *INGEST_STEPS], "each ingest step is a task, in the one order"
    assert len(states) == 11
    from features.resources import Resources

    resources = Resources(stack)
    assert resources.store.get_feature_view("employee_features").materialization_intervals
    assert webhook.received == [], "a green run raises no alert"


@pytest.mark.integration
def test_bad_export_stops_the_run_before_anything_is_served(stack, nightly_env, webhook, tmp_path):
    inbox = tmp_path / "bad-inbox"
    inbox.mkdir()
    good = sorted(nightly_env.glob("*.csv"))[-1]
    lines = good.read_text().splitlines()
    header = lines[0].split(",")
    column = header.index("JobSatisfaction")
    bad_rows = [",".join("7" if i == column else v for i, v in enumerate(line.split(","))) for line in lines[1:6]]
    (inbox / good.name).write_text("\n".join([lines[0], *bad_rows, *lines[6:]]) + "\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FP_ALERT_WEBHOOK_URL", webhook.url)
        run_id, state = local_airflow.run_dag("hr_feature_pipeline", conf={"inbox": str(inbox)})
    states = local_airflow.task_states("hr_feature_pipeline", run_id)
    assert state == "failed"
    assert (states["keep_raw"], states["validate_raw"]) == ("success", "failed"), states
    for downstream in ("materialize_incremental", "announce_fresh_features"):
        assert states[downstream] in {"upstream_failed", "skipped"}, states
    alerts = [a for a in webhook.received if a.get("kind") == "task_failed"]
    assert alerts and alerts[0]["task_id"] == "validate_raw" and alerts[0]["dag_id"] == "hr_feature_pipeline"
    assert "JobSatisfaction" in alerts[0]["error"] and alerts[0]["run_id"] == run_id
    assert alerts[0]["log_url"]
    # Bad data fails fast: the alert says so, and that no retry follows.
    assert (alerts[0]["try"], alerts[0]["retry_follows"]) == (1, False) and alerts[0]["max_tries"] > 1
    assert alerts[0]["why_no_retry"].startswith("failed fast")
    # Quarantined once: the reason points at the raw export the run kept, no second copy.
    from core import s3

    day = good.stem.removeprefix("hr_export_")
    keys = s3.list_keys(stack, f"{stack.s3_quarantine_prefix}/raw_hr_export/extraction_date={day}/")
    newest = max(k.rsplit("/", 2)[-2] for k in keys)
    folder = [k for k in keys if k.rsplit("/", 2)[-2] == newest]
    assert [k.rsplit("/", 1)[-1] for k in folder] == ["reason.json"], folder
    assert json.loads(s3.get_bytes(stack, folder[0]))["batch"].startswith(f"s3://{stack.s3_bucket}/{stack.s3_raw_prefix}/")


@pytest.mark.integration
def test_the_nightly_run_catches_up_after_skipped_nights(stack, airflow_home, exports, tmp_path, monkeypatch):
    """August was published; the nights that should have published September and October were
    skipped. The next run publishes both, oldest first, each through the gate, and serves October."""
    from etl import layout
    from features import online

    settings, inbox, days = _august_published(stack, exports, tmp_path, monkeypatch, "catchup")
    run_id, state = local_airflow.run_dag("hr_feature_pipeline", conf={"inbox": str(inbox)})
    states = local_airflow.task_states("hr_feature_pipeline", run_id)
    assert state == "success", states
    assert layout.list_partitions(settings) == days
    assert _xcom(run_id, "announce_fresh_features") == [d.isoformat() for d in days[1:]], "both skipped nights, oldest first"
    created = [layout.read_partition(settings, d, ["created_timestamp"])["created_timestamp"][0].as_py() for d in days]
    assert created[1] < created[2], "September was published before October"
    assert online.served_extraction(settings) == days[-1]


@pytest.mark.integration
def test_a_rejected_export_stops_the_catch_up_there_and_the_older_one_is_published(stack, airflow_home, exports,
                                                                                    tmp_path, monkeypatch):
    """August published; September is good, October breaks the raw suite. The run publishes
    September, quarantines October, publishes nothing newer, and fails at its last ingest step with
    the reason; no lease of either date is left behind."""
    from helpers import rejected_export
    from core import s3
    from etl import layout

    settings, inbox, days = _august_published(stack, exports, tmp_path, monkeypatch, "catchup-bad")
    rejected_export(exports[-1], inbox)
    run_id, state = local_airflow.run_dag("hr_feature_pipeline", conf={"inbox": str(inbox)})
    states = local_airflow.task_states("hr_feature_pipeline", run_id)
    assert state == "failed"
    assert [states[name] for name in INGEST_STEPS] == ["success"] * 4 + ["failed"], states
    assert states["materialize_incremental"] == "upstream_failed"
    assert layout.list_partitions(settings) == days[:2], "September published, October not"
    assert s3.list_keys(settings, f"{settings.s3_quarantine_prefix}/raw_hr_export/extraction_date={days[2]}/")
    assert s3.list_keys(settings, layout.raw_prefix(settings, days[2])), "the rejected export is kept as received"
    assert not [k for d in days[1:] for k in s3.list_keys(settings, layout.ingest_lock_key(settings, d))]


def _august_published(stack, exports, tmp_path, monkeypatch, name: str):
    """Settings of a test's own (in the environment, for the DAG), an inbox holding the last three
    monthly exports, and the oldest of them already published: (settings, inbox, their dates)."""
    from helpers import cli_env, ingest_exports, isolated
    from etl import layout

    settings = isolated(stack, tmp_path, name)
    for key, value in cli_env(settings).items():
        monkeypatch.setenv(key, value)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for path in exports[-3:]:
        (inbox / path.name).write_bytes(path.read_bytes())
    days = [datetime.fromisoformat(p.stem.removeprefix("hr_export_")).date() for p in exports[-3:]]
    ingest_exports(settings, exports[-3:-2])
    assert layout.list_partitions(settings) == days[:1]
    return settings, inbox, days


def _xcom(run_id: str, task_id: str):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(XComModel).filter_by(dag_id="hr_feature_pipeline", run_id=run_id, task_id=task_id,
                                                 key="return_value").one()
        return XComModel.deserialize_value(row)


def test_a_failed_worker_step_carries_its_own_output():
    """Whatever the task log's level, the failure says what the step printed last."""
    from orchestration.worker import LocalCommandOperator

    operator = LocalCommandOperator(task_id="step", argv=["python", "-c", "print('reading s3://x'); "
                                                          "print('error: registry unreachable'); raise SystemExit(3)"],
                                    env={})
    with pytest.raises(RuntimeError, match="exited with status 3; its last output lines:\nreading s3://x\n"
                                           "error: registry unreachable"):
        operator.execute({})


def test_training_without_enough_history_ends_skipped_saying_why(stack, tmp_path):
    """The training step's "not enough data" status (2) skips the task with the reason; any other
    failure still fails it. The DAG's operator is the one checked."""
    from airflow.sdk.exceptions import AirflowSkipException

    from orchestration.worker import LocalCommandOperator

    dag = local_airflow.load_dag("attrition_training")
    train = dag.get_task("train_model")
    assert train.skip_on_exit_code == 2
    empty = {**train.env, "FP_S3_FEATURES_PREFIX": f"nothing-{os.urandom(3).hex()}/features",
             "FP_S3_RAW_PREFIX": f"nothing-{os.urandom(3).hex()}/raw"}
    operator = LocalCommandOperator(task_id="train_model", argv=train.argv, env=empty, skip_on_exit_code=2)
    operator.argv = [a if "{{" not in a else "6" for a in operator.argv]
    with pytest.raises(AirflowSkipException, match=r"exited with status 2: error"):
        operator.execute({})
    broken = LocalCommandOperator(task_id="t", argv=["python", "-c", "raise SystemExit(1)"], env={},
                                  skip_on_exit_code=2)
    with pytest.raises(RuntimeError, match="exited with status 1"):
        broken.execute({})


def test_an_inbox_outside_the_configured_locations_stops_the_run_at_once(stack, tmp_path, monkeypatch):
    monkeypatch.setenv("FP_INBOX_ALLOWED", str(tmp_path / "allowed"))
    local_airflow.ensure_metadata_db()
    run_id, state = local_airflow.run_dag("hr_feature_pipeline", conf={"inbox": "/etc"})
    states = local_airflow.task_states("hr_feature_pipeline", run_id)
    assert state == "failed" and states["plan_exports"] == "failed", states
    assert {states.get(name) for name in INGEST_STEPS} <= {"upstream_failed", None}, states
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        ti = session.query(TaskInstance).filter_by(dag_id="hr_feature_pipeline", run_id=run_id,
                                                   task_id="plan_exports").one()
        assert ti.try_number == 1, "a location that is not allowed fails at once, without retries"
