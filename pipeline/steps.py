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


def pending_exports(settings: Settings, inbox: str, run_date: date,
                    extraction_date: date | None = None) -> list[tuple[date, str]]:
    """What a nightly run ingests, oldest first.

    Every export dated after the newest published extraction and on or before ``run_date``: after
    skipped nights, the exports in between are published too (their leavers would otherwise be
    labelled as stayers). When none is newer (a re-run), the newest export on or before
    ``run_date`` again (ingest is idempotent). ``extraction_date``: exactly that date's export."""
    from etl import layout

    found = {d: p for d, p in list_exports(settings, inbox).items() if d <= run_date}
    if extraction_date is not None:
        if extraction_date not in found:
            older = [d for d in found if d < extraction_date]
            raise NoExportError(f"no export dated {extraction_date} in {inbox}"
                                + (f" (newest before it: {max(older)})" if older else ""))
        return [(extraction_date, found[extraction_date])]
    if not found:
        raise NoExportError(f"no hr_export_YYYY-MM-DD.csv dated on or before {run_date} in {inbox}")
    published = layout.list_partitions(settings)
    pending = [(d, p) for d, p in found.items() if not published or d > published[-1]]
    if pending:
        log.info("%d export(s) newer than the last published extraction (%s): %s", len(pending),
                 published[-1] if published else "none", ", ".join(d.isoformat() for d, _ in pending))
        return pending
    newest = max(found)
    log.info("no export newer than the last published extraction (%s): re-ingesting the newest, %s",
             published[-1], newest)
    return [(newest, found[newest])]


def backfill_window(found: dict[date, str], start: str | None, end: str | None) -> tuple[date, date]:
    """The backfill's window: the given dates, or else the first and the last export in the inbox."""
    if not found and not (start and end):
        raise NoExportError("no hr_export_YYYY-MM-DD.csv in the inbox: nothing to backfill")
    first = date.fromisoformat(start) if start else min(found)
    last = date.fromisoformat(end) if end else max(found)
    if last < first:
        raise ValueError(f"end_date {last} is before start_date {first}")
    return first, last
