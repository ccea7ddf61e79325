"""pipeline.steps: which exports a run may read (the inbox is a form field, so it is checked)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import pytest

from core import settings as settings_mod
from pipeline import steps


@pytest.fixture
def inbox_settings(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "hr_export_2026-10-31.csv").write_text("x")
    (inbox / "notes.txt").write_text("x")
    return replace(settings_mod.load(), inbox_roots=(str(inbox), "s3://hr-inbox/exports")), inbox


def test_configured_locations_are_allowed(inbox_settings):
    settings, inbox = inbox_settings
    assert steps.list_exports(settings, str(inbox)) == {date(2026, 10, 31): str(inbox / "hr_export_2026-10-31.csv")}
    steps.check_inbox(settings, str(inbox / "sub"))  # inside an allowed folder
    steps.check_inbox(settings, "s3://hr-inbox/exports/2026/")


@pytest.mark.parametrize("where", ["/etc", "{inbox}/../elsewhere", "{inbox}-sibling", "s3://hr-inbox/exports-other",
                                   "s3://other-bucket/exports"])
def test_anything_else_is_refused(inbox_settings, where):
    settings, inbox = inbox_settings
    with pytest.raises(steps.InboxNotAllowed, match="is not an allowed location"):
        steps.list_exports(settings, where.format(inbox=inbox))


def test_a_link_out_of_the_inbox_is_refused(inbox_settings, tmp_path):
    settings, inbox = inbox_settings
    link = inbox / "etc"
    link.symlink_to("/etc")
    with pytest.raises(steps.InboxNotAllowed):
        steps.list_exports(settings, str(link))


def test_the_backfill_window_defaults_to_the_exports_present():
    found = {date(2023, 1, 31): "a", date(2026, 10, 31): "b", date(2025, 6, 30): "c"}
    assert steps.backfill_window(found, None, None) == (date(2023, 1, 31), date(2026, 10, 31))
    assert steps.backfill_window(found, "2025-01-01", None) == (date(2025, 1, 1), date(2026, 10, 31))
    assert steps.backfill_window(found, None, "2025-12-31") == (date(2023, 1, 31), date(2025, 12, 31))
    with pytest.raises(ValueError, match="before start_date"):
        steps.backfill_window(found, "2026-01-01", "2025-01-01")
    with pytest.raises(steps.NoExportError):
        steps.backfill_window({}, None, None)


@pytest.mark.integration
def test_a_nightly_run_plans_every_export_since_the_last_published_oldest_first(stack, tmp_path):
    from helpers import isolated
    from core import s3
    from etl import layout

    inbox = tmp_path / "nightly-inbox"
    inbox.mkdir()
    days = [date(2026, 7, 31), date(2026, 8, 31), date(2026, 9, 30), date(2026, 10, 31)]
    for day in days:
        (inbox / f"hr_export_{day}.csv").write_text("x")
    settings = replace(isolated(stack, tmp_path, "plan"), inbox_roots=(str(inbox),))
    plan = lambda run_date, chosen=None: [d for d, _ in steps.pending_exports(settings, str(inbox), run_date, chosen)]  # noqa: E731

    assert plan(date(2026, 11, 24)) == days, "nothing published yet: every export, oldest first"
    s3.put_bytes(settings, layout.partition_key(settings, days[1]), b"published")
    # Two nights were skipped after August: both September and October are planned, in order.
    assert plan(date(2026, 11, 24)) == days[2:]
    assert plan(date(2026, 10, 15)) == [days[2]], "nothing dated after the run's date"
    s3.put_bytes(settings, layout.partition_key(settings, days[3]), b"published")
    assert plan(date(2026, 11, 24)) == [days[3]], "a re-run re-ingests the newest export, no gap is filled behind it"
    assert plan(date(2026, 11, 24), days[0]) == [days[0]], "a named date is exactly that export"
    with pytest.raises(steps.NoExportError, match="no export dated 2026-08-15 .*newest before it: 2026-07-31"):
        plan(date(2026, 11, 24), date(2026, 8, 15))
    with pytest.raises(steps.NoExportError):
        plan(date(2026, 1, 1))
