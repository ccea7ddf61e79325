"""Pipeline steps and the demo entry point; orchestration lives in dags/."""
