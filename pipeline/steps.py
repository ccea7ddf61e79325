"""The nightly pipeline's steps as plain functions; the Airflow DAG and the demo only sequence them.

Heavy steps (materialization, training) run as CLI commands through orchestration.worker, so the
same argv runs as a local subprocess or in a Kubernetes pod.
"""

from __future__ import annotations

import logging
from datetime import date
from pathlib import Path

from core import s3
from core.settings import Settings
from etl.schema import export_date
from etl.schema import safe_name as schema_safe

log = logging.getLogger(__name__)



class NoExportError(FileNotFoundError):
    """No HR export for the requested date is in the inbox."""


class InboxNotAllowed(ValueError):
    """The inbox named is not one of the configured locations (FP_INBOX, FP_INBOX_ALLOWED)."""


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_inbox(settings: Settings, inbox: str) -> None:
    """A run may read exports only from configured locations: the inbox is a form field, and a
    free path would let anyone who can trigger a run upload any file the worker can read."""
    if inbox.startswith("s3://"):
        wanted = inbox.rstrip("/") + "/"
        allowed = any(wanted.startswith(r.rstrip("/") + "/") for r in settings.inbox_roots if r.startswith("s3://"))
    else:
        path = Path(inbox).resolve()  # resolves links and '..' before comparing
        allowed = any(_within(path, Path(r).resolve()) for r in settings.inbox_roots if not r.startswith("s3://"))
    if not allowed:
        raise InboxNotAllowed(f"inbox {schema_safe(inbox)!r} is not an allowed location; allowed: "
                              f"{', '.join(settings.inbox_roots)} (FP_INBOX, FP_INBOX_ALLOWED)")


def list_exports(settings: Settings, inbox: str) -> dict[date, str]:
    """Exports in the inbox (a local folder or an s3:// prefix) by extraction date."""
    check_inbox(settings, inbox)
    found: dict[date, str] = {}
    if inbox.startswith("s3://"):
        bucket, prefix = s3.parse_uri(inbox.rstrip("/") + "/")
        client = s3.client(settings)
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                day = export_date(obj["Key"])
                if day:
                    found[day] = f"s3://{bucket}/{obj['Key']}"
    else:
        folder = Path(inbox)
        if folder.is_dir():
            for path in folder.iterdir():
                day = export_date(path.name)
                if day is None:
                    continue
                if path.is_symlink() or not path.is_file():
                    log.warning("ignoring %s in the inbox: exports must be regular files, not links or folders",
                                schema_safe(path.name))
                    continue
                found[day] = str(path)
    return dict(sorted(found.items()))


def find_export(settings: Settings, inbox: str, run_date: date) -> tuple[date, str]:
    """The newest export extracted on or before ``run_date``."""
    exports = {d: p for d, p in list_exports(settings, inbox).items() if d <= run_date}
    if not exports:
        raise NoExportError(f"no hr_export_YYYY-MM-DD.csv dated on or before {run_date} in {inbox}")
    as_of = max(exports)
    return as_of, exports[as_of]



def backfill_window(found: dict[date, str], start: str | None, end: str | None) -> tuple[date, date]:
    """The backfill's window: the given dates, or else the first and the last export in the inbox."""
    if not found and not (start and end):
        raise NoExportError("no hr_export_YYYY-MM-DD.csv in the inbox: nothing to backfill")
    first = date.fromisoformat(start) if start else min(found)
    last = date.fromisoformat(end) if end else max(found)
    if last < first:
        raise ValueError(f"end_date {last} is before start_date {first}")
    return first, last
