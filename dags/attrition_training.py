"""
### Attrition model training

Runs whenever the nightly pipeline announces fresh features (the `employee_features` Asset) and
from the UI. `python -m training train` builds labels from the HR exports (left within the next
*horizon* extractions), pulls a point-in-time correct training set through the feature service
`attrition_model_v1`, trains and evaluates on a time-based split, and stores the model with its
ordered feature list, fingerprints, metrics and model card under `models/attrition/<version>/`.
The `latest` pointer moves only when the model passes the quality gate (ROC AUC).

The job runs in a worker pod (KubernetesPodOperator) or a local subprocess, per `FP_RUNNER`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag

from core import settings as settings_mod
from orchestration.dag_defaults import default_args, features_asset
from orchestration.worker import PodResources, worker_task

SETTINGS = settings_mod.load()


@dag(
    dag_id="attrition_training",
    schedule=[features_asset(SETTINGS)],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["training", "model"],
    default_args=default_args(timeout=timedelta(hours=2), retries=1, retry_delay=timedelta(minutes=5)),
    params={
        "horizon_extractions": Param(6, type="integer", minimum=1, maximum=24, title="Label horizon (extractions)",
                                     description="An employee counts as leaving if they leave within this many "
                                                 "later extractions (6 monthly exports: about six months)."),
    },
)
def attrition_training():
    # Exit status 2 is "not enough data yet" (too little history for labels and a test period): the
    # task ends skipped, and its log says what is missing, instead of failing and alerting.
    worker_task("train_model", ["python", "-m", "training", "train", "--horizon-extractions", "{{ params.horizon_extractions }}"],
                SETTINGS, resources=PodResources(cpu_request="1", cpu_limit="2", memory_request="2Gi", memory_limit="4Gi"),
                skip_on_exit_code=2)


attrition_training_dag = attrition_training()
