"""Airflow on a laptop: its home under FP_LOCAL_DIR, a SQLite metadata DB, our dags/ folder.

``configure()`` must run before ``airflow`` is imported (Airflow reads its configuration at
import). ``run_dag()`` runs one DAG run in this process with ``dag.test()``, the way `make demo`
and the DAG tests do.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy.exc import StatementError

from core.settings import PROJECT_ROOT, Settings

log = logging.getLogger(__name__)

DAGS_FOLDER = PROJECT_ROOT / "dags"


def airflow_env(settings: Settings) -> dict[str, str]:
    home = settings.local_dir / "airflow"
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "60",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "AIRFLOW__CORE__ALLOWED_DESERIALIZATION_CLASSES_REGEXP": r"(airflow|orchestration)\..*",
        # A DAG version without task instances is rewritten in place when its file changes, and
        # Airflow's DAG cache trusts a cached version for this many seconds: at the default 30 a
        # run started soon after (a changed features location, the next test) ran the DAG as it
        # was parsed before, with the old Asset. Locally the cache always checks.
        "AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL": "0",
    }


def configure(settings: Settings) -> dict[str, str]:
    """Point Airflow at the local stack's home unless the environment already chose one."""
    env = airflow_env(settings)
    for key, value in env.items():
        os.environ.setdefault(key, value)
    Path(os.environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    return {k: os.environ[k] for k in env}


def ensure_metadata_db() -> None:
    """Create or upgrade the metadata DB (idempotent; a no-op when it is current)."""
    home = Path(os.environ["AIRFLOW_HOME"])
    stamp = home / ".migrated"
    if stamp.exists():
        return
    log.info("initialising the Airflow metadata DB in %s (first run only)", home)
    proc = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, text=True,
                          env=os.environ.copy())
    if proc.returncode != 0:
        raise RuntimeError(f"`airflow db migrate` failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    stamp.write_text(datetime.now(timezone.utc).isoformat())


def load_dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    if bag.import_errors:
        raise RuntimeError("DAG import errors:\n" + "\n".join(f"{k}: {v}" for k, v in bag.import_errors.items()))
    return bag.dags[dag_id]


def _settle_assets() -> None:
    """Before a run without a scheduler: the DAG files as they parse now in the metadata DB, and the
    scheduler's Asset pass (retire Assets no DAG references, activate the referenced ones).

    ``dag.test()`` activates an Asset only when no active one holds its name or URI, and leaves
    retiring the old one to the scheduler; when the features location changed since the last run
    (another bucket or prefix), the new Asset would stay inactive and announcing it would fail."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.utils.session import create_session

    manager = DagBundlesManager()
    with create_session() as session:
        manager.sync_bundles_to_db(session=session)
    for bundle in manager.get_all_dag_bundles():
        if not bundle.is_initialized:
            bundle.initialize()
        sync_bag_to_db(BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name),
                       bundle.name, bundle.version)
    with create_session() as session:
        # The pass needs no scheduler state (its helpers are static), only the session.
        SchedulerJobRunner._update_asset_orphanage(object.__new__(SchedulerJobRunner), session=session)


def run_dag(dag_id: str, conf: dict | None = None, run_after: datetime | None = None) -> tuple[str, str]:
    """Run one DAG run in this process; return (run_id, state) as recorded in the metadata DB.

    apache/airflow#73428: on DAGs with a deadline, ``dag.test()`` finishes the run and then fails
    in its final ``update_state`` ('dict' object has no attribute 'hex'). The run's real outcome
    is in the metadata DB either way, so it is read from there.
    """
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState

    dag = load_dag(dag_id)
    _settle_assets()
    run_after = run_after or datetime.now(timezone.utc)
    tripped = False
    # dag.test() talks to Airflow's execution API through Starlette's test client, which warns
    # about its own httpx use: nothing a user of this project can act on.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    try:
        dag.test(run_after=run_after, logical_date=None, run_conf=conf or {})
    except (AttributeError, StatementError) as exc:
        if "has no attribute 'hex'" not in str(exc) or not dag.deadline:
            raise
        tripped = True
        log.info("dag.test() tripped over apache/airflow#73428 after its tasks ran; settling the run's state")
    with create_session() as session:
        # dag.test() replaces earlier test runs of the DAG: the newest run is this one.
        run = session.query(DagRun).filter(DagRun.dag_id == dag_id).order_by(DagRun.id.desc()).first()
        if run is None:
            raise RuntimeError(f"no run of {dag_id} was recorded")
        if tripped and run.state == DagRunState.RUNNING:
            states = task_states(dag_id, run.run_id)
            unfinished = {t for t, s in states.items() if s not in FINISHED}
            if not unfinished:
                failed = any(s in {"failed", "upstream_failed"} for s in states.values())
                run.set_state(DagRunState.FAILED if failed else DagRunState.SUCCESS)
                session.merge(run)
        return run.run_id, str(run.state)


FINISHED = {"success", "failed", "upstream_failed", "skipped", "removed"}


def task_states(dag_id: str, run_id: str) -> dict[str, str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = (session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
               .order_by(TaskInstance.start_date, TaskInstance.task_id).all())
        return {ti.task_id: str(ti.state) for ti in tis}


def standalone(settings: Settings, port: int = 8080) -> int:
    """`airflow standalone` on the local stack: UI and API on 127.0.0.1:<port>, every user an admin
    (a laptop only; the Helm deployment configures real authentication)."""
    # Task logs at INFO: each step says what it read, wrote and decided (in-process test runs keep
    # WARNING so that a console is not flooded).
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO")
    env = configure(settings)
    os.environ.setdefault("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "True")
    os.environ.setdefault("AIRFLOW__API__PORT", str(port))
    # Log links in alerts and the UI follow the port too.
    os.environ.setdefault("AIRFLOW__API__BASE_URL", f"http://127.0.0.1:{os.environ['AIRFLOW__API__PORT']}/")
    os.environ.setdefault("AIRFLOW__API__HOST", "127.0.0.1")
    os.environ.setdefault("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "True")
    # Task processes reach the API server through this URL; it follows the port chosen above.
    os.environ.setdefault("AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
                          f"http://127.0.0.1:{os.environ['AIRFLOW__API__PORT']}/execution/")
    # `airflow standalone` starts its components as `airflow ...` by name: this environment's
    # `airflow` must come first on PATH even from a shell where the virtual environment is not active.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    ensure_metadata_db()
    print(f"Airflow UI: http://127.0.0.1:{os.environ['AIRFLOW__API__PORT']}  (home {env['AIRFLOW_HOME']})", flush=True)
    return subprocess.call([sys.executable, "-m", "airflow", "standalone"], env=os.environ.copy())


if __name__ == "__main__":
    from core import log as logsetup
    from core import settings as settings_mod

    logsetup.setup()
    sys.exit(standalone(settings_mod.load(), int(os.environ.get("AIRFLOW__API__PORT", "8080"))))
