"""The ingest steps, in order: the one list that sequences them.

``pipeline.ingest`` runs them in one process (``python -m pipeline ingest``, the backfill, a
recompute); the nightly DAG runs each as an Airflow task of its own, in this order. Names only, no
imports: the DAG file reads this list when it is parsed.
"""

INGEST_STEPS = (
    "keep_raw",           # the export as received, under raw/ (before anything can reject it)
    "validate_raw",       # Great Expectations suite raw_hr_export; a failing batch is quarantined
    "stage_features",     # the six features, staged under staging/
    "validate_features",  # suite employee_features on the staged partition
    "publish",            # one server-side copy to the partition's key, under the date's lease
)
