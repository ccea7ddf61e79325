"""Airflow glue: where heavy steps run (worker.py), alerts (alerts.py), a local Airflow (local_airflow.py)."""
