"""What the platform's DAGs share, in one place: the features Asset and the task defaults.

Imported when the DAG files are parsed: Airflow's SDK and this project's settings only.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Asset

from core.settings import Settings
from orchestration import alerts

OWNER = "people-analytics-platform"


def features_asset(settings: Settings) -> Asset:
    """Updated by the nightly pipeline once fresh features are served; training follows it."""
    return Asset(name="employee_features", uri=settings.features_uri, group="feature-store")


def default_args(*, timeout: timedelta, retries: int, retry_delay: timedelta,
                 max_retry_delay: timedelta | None = None) -> dict:
    """Every task: bounded (a hung dependency fails the task instead of holding the run forever),
    retried with backoff, and alerting after its last try."""
    args = {"execution_timeout": timeout, "owner": OWNER, "retries": retries, "retry_delay": retry_delay,
            "retry_exponential_backoff": retries > 1, "on_failure_callback": alerts.AlertNotifier()}
    if max_retry_delay is not None:
        args["max_retry_delay"] = max_retry_delay
    return args
