"""Ingest against the real S3 API server: layout, idempotence, raw kept, encryption, atomic partitions."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import date
from urllib.parse import urlparse

import pytest

from helpers import ROOT, Proxy, cli_env, isolated, rejected_export, run_cli
from core import s3
from core.lease import Busy, Lease
from pipeline import ingest as ing
from pipeline.sequence import INGEST_STEPS
from etl import layout
from etl.layout import partition_key, partition_prefix, raw_key
from etl.generate import export_name

pytestmark = pytest.mark.integration


def test_cli_ingest_publishes_one_partition_and_keeps_raw(stack, exports):
    as_of = date(2026, 10, 31)
    proc = run_cli("pipeline", "ingest", str(exports[-1]), "--as-of", as_of.isoformat())
    assert proc.returncode == 0, proc.stderr
    assert "rows in" in proc.stdout and "features published to s3://" in proc.stdout
    keys = s3.list_keys(stack, partition_prefix(stack, as_of))
    assert keys == [partition_key(stack, as_of)]
    data = exports[-1].read_bytes()
    raw = raw_key(stack, as_of, data, exports[-1].name)
    assert raw in s3.list_keys(stack, f"{stack.s3_raw_prefix}/extraction_date={as_of}/")
    assert s3.get_bytes(stack, raw) == data, "raw export kept byte for byte, under its content address"
    table = layout.read_partition(stack, as_of)
    assert table.num_rows == sum(1 for _ in exports[-1].open()) - 1


def test_json_output_says_what_was_written(stack, exports, tmp_path):
    settings = isolated(stack, tmp_path, "json")
    day = date.fromisoformat(exports[-1].stem.removeprefix("hr_export_"))
    proc = run_cli("pipeline", "ingest", str(exports[-1]), "--as-of", day.isoformat(), "--json",
                   env={"FP_S3_FEATURES_PREFIX": settings.s3_features_prefix, "FP_S3_RAW_PREFIX": settings.s3_raw_prefix})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["as_of"] == day.isoformat() and result["validated"] is True
    assert result["features_uri"] == f"s3://{stack.s3_bucket}/{partition_key(settings, day)}"
    assert result["rows_out"] == layout.read_partition(settings, day).num_rows == result["active"] + result["leavers"]
    assert s3.exists(settings, s3.parse_uri(result["raw_uri"])[1])


def test_rerun_replaces_never_duplicates(stack, exports):
    as_of = date(2026, 9, 30)
    first = ing.ingest(stack, str(exports[-2]), as_of)
    second = ing.ingest(stack, str(exports[-2]), as_of)
    assert second.raw_already_kept, "the second run finds the raw export already kept"
    assert s3.list_keys(stack, partition_prefix(stack, as_of)) == [partition_key(stack, as_of)]
    table = layout.read_partition(stack, as_of)
    assert table.num_rows == first.rows_out == second.rows_out
    assert table["employee_id"].to_pylist() == sorted(set(table["employee_id"].to_pylist()))


def test_corrected_export_sits_beside_the_original(stack, exports, tmp_path):
    as_of = date(2026, 8, 31)
    original = exports[-3].read_bytes()
    ing.ingest(stack, str(exports[-3]), as_of)
    corrected = tmp_path / export_name(as_of)
    lines = original.decode().splitlines()
    corrected.write_text("\n".join(lines[:-5]) + "\n")  # five employees removed in the correction
    ing.ingest(stack, str(corrected), as_of)
    raw_keys = s3.list_keys(stack, f"{stack.s3_raw_prefix}/extraction_date={as_of}/")
    assert len(raw_keys) == 2
    assert original in {s3.get_bytes(stack, k) for k in raw_keys}, "the original raw export is untouched"
    assert layout.read_partition(stack, as_of).num_rows == len(lines) - 1 - 5, "the partition now holds the correction"


def test_objects_request_server_side_encryption(stack, exports):
    as_of = date(2026, 10, 31)
    ing.ingest(stack, str(exports[-1]), as_of)
    head = s3.client(stack).head_object(Bucket=stack.s3_bucket, Key=partition_key(stack, as_of))
    assert head.get("ServerSideEncryption") == "AES256"


def test_every_object_the_pipeline_writes_requests_encryption(stack, exports, tmp_path):
    """Not only partitions: raw exports, quarantined batches and their reasons, validation reports,
    the served state, the online check's state, models and leases, in a bucket of the test's own."""
    import secrets
    from dataclasses import replace

    from helpers import served_history
    from monitoring import health

    settings = replace(isolated(stack, tmp_path, "sse"), s3_bucket=f"fp-sse-{secrets.token_hex(4)}")
    s3.ensure_bucket(settings)
    served_history(settings, exports)
    health.check(settings)
    lines = exports[-1].read_text().splitlines()
    header = lines[0].split(",")
    row = lines[1].split(",")
    row[header.index("Age")] = "999"
    bad = tmp_path / exports[-1].name
    bad.write_text("\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n")
    with pytest.raises(Exception, match="Age"):
        ing.ingest(settings, str(bad), date(2026, 10, 31))
    client = s3.client(settings)
    with Lease(settings, "locks/sse-test", "the encryption test"):
        keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=settings.s3_bucket)
                for o in page.get("Contents", [])]
        kinds = {k.split("/")[1] if k.startswith("sse-") else k.split("/")[0] for k in keys}
        assert {"raw", "features", "quarantine", "models", "monitoring", "online", "locks"} <= kinds, sorted(kinds)
        assert any(k.endswith("reason.json") for k in keys) and any(k.endswith(".html") for k in keys), keys
        unencrypted = [k for k in keys
                       if client.head_object(Bucket=settings.s3_bucket, Key=k).get("ServerSideEncryption") != "AES256"]
    assert unencrypted == [], f"{len(unencrypted)} of {len(keys)} objects without encryption: {unencrypted[:10]}"


def test_future_date_and_bad_file_are_clear_errors(stack, exports, tmp_path):
    proc = run_cli("pipeline", "ingest", str(exports[-1]), "--as-of", "2999-01-31", "--no-validate")
    assert proc.returncode == 2 and "in the future" in proc.stderr
    bad = tmp_path / "hr_export_2026-07-31.csv"
    bad.write_text("EmployeeNumber,Age\n1,30\n")
    proc = run_cli("pipeline", "ingest", str(bad), "--as-of", "2026-07-31", "--no-validate")
    assert proc.returncode == 2
    assert str(bad) in proc.stderr and "missing column(s)" in proc.stderr
    proc = run_cli("pipeline", "ingest", str(bad), "--as-of", "2026-07-31")
    assert proc.returncode == 1, proc.stderr
    assert str(bad) in proc.stderr and "expect_table_columns_to_match_set" in proc.stderr
    assert s3.list_keys(stack, partition_prefix(stack, date(2026, 7, 31))) == [], "nothing published"


WRITER = """
import sys
from core import settings
from core.s3 import put_bytes
print("uploading", flush=True)
put_bytes(settings.load(), sys.argv[1], b"x" * (400 * 1024 * 1024))
print("finished", flush=True)
"""


def test_killed_writer_leaves_previous_partition_readable(stack, exports):
    """SIGKILL the writer in the middle of a multipart upload: readers still see the old partition whole."""
    as_of = date(2026, 10, 31)
    ing.ingest(stack, str(exports[-1]), as_of)
    key = partition_key(stack, as_of)
    before = layout.read_partition(stack, as_of)
    client = s3.client(stack)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, key], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "uploading"
        deadline = time.monotonic() + 30
        in_progress = []
        while time.monotonic() < deadline and not in_progress:
            uploads = client.list_multipart_uploads(Bucket=stack.s3_bucket, Prefix=key).get("Uploads", [])
            in_progress = [u for u in uploads if u["Key"] == key]
            time.sleep(0.05)
        assert in_progress, "the writer never started its multipart upload"
        assert writer.poll() is None, "the writer finished before it could be interrupted"
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
    finally:
        if writer.poll() is None:
            writer.kill()
    after = layout.read_partition(stack, as_of)
    assert after.equals(before), "the partition readers see is the previous one, intact"
    for upload in client.list_multipart_uploads(Bucket=stack.s3_bucket, Prefix=key).get("Uploads", []):
        client.abort_multipart_upload(Bucket=stack.s3_bucket, Key=upload["Key"], UploadId=upload["UploadId"])


@pytest.mark.parametrize("args, message", [
    (["--as-of", "1900-01-01"], "extraction date 1900-01-01 is before 2000-01-01"),
    (["--as-of", "2026-09-30"], "the file name says extraction date 2026-10-31, --as-of says 2026-09-30"),
])
def test_implausible_extraction_dates_are_refused_before_anything_is_written(stack, exports, args, message):
    as_of = args[1]
    proc = run_cli("pipeline", "ingest", str(exports[-1]), *args, "--no-validate")
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    if as_of == "1900-01-01":
        assert s3.list_keys(stack, partition_prefix(stack, date(1900, 1, 1))) == []


def test_no_validate_never_publishes_duplicate_employees(stack, exports, tmp_path):
    lines = exports[-1].read_text().splitlines()
    header = lines[0].split(",")
    key = header.index("EmployeeNumber")
    second = lines[2].split(",")
    second[key] = lines[1].split(",")[key]
    day = date(2026, 6, 30)
    path = tmp_path / export_name(day)
    path.write_text("\n".join([lines[0], lines[1], ",".join(second), *lines[3:]]) + "\n")
    proc = run_cli("pipeline", "ingest", str(path), "--as-of", day.isoformat(), "--no-validate")
    assert proc.returncode == 2 and "column EmployeeNumber: 1 duplicated employee number(s)" in proc.stderr
    assert s3.list_keys(stack, partition_prefix(stack, day)) == []


def test_no_validate_still_runs_the_features_suite(stack, exports, tmp_path):
    """A tenure of 99 years: the raw suite (skipped) and the features suite would both refuse it;
    with --no-validate the features suite still does, and nothing is published."""
    lines = exports[-1].read_text().splitlines()
    at = lines[0].split(",").index("YearsAtCompany")
    row = lines[1].split(",")
    row[at] = "99"
    day = date(2026, 4, 30)
    path = tmp_path / export_name(day)
    path.write_text("\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n")
    proc = run_cli("pipeline", "ingest", str(path), "--as-of", day.isoformat(), "--no-validate")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "employee_features" in proc.stderr and "tenure" in proc.stderr
    assert s3.list_keys(stack, partition_prefix(stack, day)) == []
    path.write_text("\n".join(lines) + "\n")
    proc = run_cli("pipeline", "ingest", str(path), "--as-of", day.isoformat(), "--no-validate")
    assert proc.returncode == 0 and "raw suite skipped (--no-validate); features suite passed" in proc.stdout


def test_concurrent_ingests_of_one_date_publish_one_complete_version(stack, exports, tmp_path):
    """Two runs of one date, started together with different exports: every run that exits 0
    published exactly its own version, a run that found the date busy exits 4 having written
    nothing, and the partition is one complete version, never a mix."""
    day = date(2026, 5, 31)
    lines = exports[0].read_text().splitlines()
    versions = {}
    for name, keep in (("a", len(lines)), ("b", len(lines) - 7)):
        folder = tmp_path / name
        folder.mkdir()
        path = folder / export_name(day)
        path.write_text("\n".join(lines[:keep]) + "\n")
        versions[name] = keep - 1
    procs = {n: subprocess.Popen([sys.executable, "-m", "pipeline", "ingest", str(tmp_path / n / export_name(day)),
                                  "--as-of", day.isoformat(), "--no-validate"], cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for n in versions}
    outcomes = {n: (p.wait(120), p.stderr.read()) for n, p in procs.items()}
    assert {code for code, _ in outcomes.values()} <= {0, 4}, outcomes
    assert all("another run holds" in err for code, err in outcomes.values() if code == 4), outcomes
    winners = [n for n, (code, _) in outcomes.items() if code == 0]
    assert winners, outcomes
    assert layout.read_partition(stack, day).num_rows in {versions[n] for n in winners}
    assert s3.list_keys(stack, layout.staging_prefix(stack, day)) == [], "each run removed its own staging object"
    assert not s3.exists(stack, layout.ingest_lock_key(stack, day)), "the lease was released"


def test_an_ingest_of_a_busy_date_writes_nothing_and_exits_4(stack, exports, tmp_path):
    day = date.fromisoformat(exports[-1].stem.removeprefix("hr_export_"))
    settings = isolated(stack, tmp_path, "busy")
    env = cli_env(settings)
    with Lease(settings, layout.ingest_lock_key(settings, day), "a long ingest"):
        busy = run_cli("pipeline", "ingest", str(exports[-1]), "--as-of", day.isoformat(), env=env)
    assert busy.returncode == 4, busy.stderr[-2000:]
    assert "another run holds" in busy.stderr and "a long ingest" in busy.stderr and "Traceback" not in busy.stderr
    assert s3.list_keys(settings, settings.s3_raw_prefix + "/") == [] and layout.list_partitions(settings) == []
    done = run_cli("pipeline", "ingest", str(exports[-1]), "--as-of", day.isoformat(), env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert layout.list_partitions(settings) == [day]


def test_links_and_folders_are_refused_as_exports(stack, exports, tmp_path):
    link = tmp_path / export_name(date(2026, 10, 31))
    link.symlink_to(exports[-1])
    for source, message in ((link, "a symbolic link"), (tmp_path, "a directory")):
        proc = run_cli("pipeline", "ingest", str(source), "--as-of", "2026-10-31", "--no-validate")
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    from pipeline import steps

    assert steps.list_exports(stack, str(tmp_path)) == {}, "the inbox listing skips links too"


@pytest.mark.parametrize("source, message", [
    ("s3://{bucket}/inbox/hr_export_2026-10-31.csv", "no such object"),
    ("s3://fp-no-such-bucket-{bucket}/hr_export_2026-10-31.csv", "no such bucket"),
    ("s3://{bucket}/inbox/../hr_export_2026-10-31.csv", "without '..'"),
])
def test_storage_errors_are_one_line_with_exit_3(stack, source, message):
    proc = run_cli("pipeline", "ingest", source.format(bucket=stack.s3_bucket), "--as-of", "2026-10-31")
    assert proc.returncode == 3, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("die", [False, True], ids=["hung", "killed"])
def test_s3_failing_mid_ingest_is_exit_3_in_bounded_time_and_a_rerun_publishes(stack, exports, tmp_path, die):
    """S3 stops answering (hung) or goes away (killed) when the run stages its features, after the
    raw export was kept: the ingest ends within its S3 deadlines (3 tries of FP_S3_TIMEOUT_SECONDS)
    with exit 3 and one line, nothing is published, and a re-run publishes. The 300 s limit only
    detects a hang."""
    settings = isolated(stack, tmp_path, "fault")
    day = date.fromisoformat(exports[-1].stem.removeprefix("hr_export_"))
    proxy = Proxy(urlparse(stack.s3_endpoint_url).port, trigger=b"/staging/", die=die)
    env = {"FP_S3_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}", "FP_S3_TIMEOUT_SECONDS": "2",
           "FP_S3_FEATURES_PREFIX": settings.s3_features_prefix, "FP_S3_RAW_PREFIX": settings.s3_raw_prefix}
    try:
        failed = run_cli("pipeline", "ingest", str(exports[-1]), "--as-of", day.isoformat(), env=env, timeout=300)
    finally:
        proxy.close()
    assert proxy.hanging.is_set(), "the fault was injected at the staging write"
    assert failed.returncode == 3, failed.stderr[-2000:]
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in failed.stderr and len(errors) == 1, failed.stderr
    assert "failed to store the run for" in errors[0]
    assert ("Connect" if die else "ReadTimeout") in errors[0], errors[0]
    assert layout.list_partitions(settings) == [], "nothing published"
    assert s3.list_keys(settings, settings.s3_raw_prefix), "the raw export was kept before the fault"
    rerun = run_cli("pipeline", "ingest", str(exports[-1]), "--as-of", day.isoformat(),
                    env={k: v for k, v in env.items() if k != "FP_S3_ENDPOINT_URL"})
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert layout.list_partitions(settings) == [day]


def _lone_cr(text: str) -> bytes:
    return text.replace("\n", "\r").encode()


def _many_columns(text: str) -> bytes:
    return (",".join(f"c{i}" for i in range(50_000)) + "," + text).encode()


def _long_line(text: str) -> bytes:
    lines = text.splitlines()
    return "\n".join([*lines[:5], lines[5] + "9" * (2 << 20), *lines[6:]]).encode()


@pytest.mark.parametrize("damage, message", [
    (_lone_cr, "lone CR"), (_many_columns, "header has at least"), (_long_line, "line 6 is longer than 65536 bytes")])
def test_hostile_shapes_are_refused_in_one_short_line_and_quarantined_once(stack, exports, tmp_path, damage, message):
    """Lone-CR line endings, 50,000 columns, a 2 MB line: the gate and the reader refuse the file
    alike, before parsing it; the message is short; the batch is stored once (raw/), and the
    quarantine's reason points at it instead of holding a second copy."""
    settings = isolated(stack, tmp_path, "shape")
    day = date.fromisoformat(exports[-1].stem.removeprefix("hr_export_"))
    bad = tmp_path / exports[-1].name
    bad.write_bytes(damage(exports[-1].read_text()))
    env = {"FP_S3_FEATURES_PREFIX": settings.s3_features_prefix, "FP_S3_RAW_PREFIX": settings.s3_raw_prefix,
           "FP_S3_QUARANTINE_PREFIX": f"{settings.s3_raw_prefix}-quarantine"}
    validated = run_cli("pipeline", "ingest", str(bad), "--as-of", day.isoformat(), env=env)
    assert validated.returncode == 1 and message in validated.stderr, validated.stderr[-2000:]
    assert len(validated.stderr) < 5000, "the refusal is short whatever the file holds"
    unvalidated = run_cli("pipeline", "ingest", str(bad), "--as-of", day.isoformat(), "--no-validate", env=env)
    assert unvalidated.returncode == 2 and message in unvalidated.stderr, unvalidated.stderr[-2000:]
    assert layout.list_partitions(settings) == []
    (raw,) = s3.list_keys(settings, settings.s3_raw_prefix + "/")
    assert s3.get_bytes(settings, raw) == bad.read_bytes()
    quarantined = s3.list_keys(settings, f"{settings.s3_raw_prefix}-quarantine/")
    assert [key.rsplit("/", 1)[-1] for key in quarantined] == ["reason.json"], quarantined
    reason = json.loads(s3.get_bytes(settings, quarantined[0]))
    assert reason["batch"] == f"s3://{settings.s3_bucket}/{raw}"
    assert message in json.dumps(reason["failures"])


def _steps_one_by_one(settings, batches: list[dict], holder: str, between=None) -> list[dict]:
    """The nightly DAG's way: each step on its own, the batches carried between them as plain data."""
    for name in INGEST_STEPS:
        batches = json.loads(json.dumps(ing.run_step(settings, name, batches, holder)))
        if between:
            between(name, batches)
    return batches


def test_the_steps_taken_one_at_a_time_publish_what_one_ingest_publishes(stack, exports, tmp_path):
    days = [date.fromisoformat(p.stem.removeprefix("hr_export_")) for p in exports[-2:]]
    whole = isolated(stack, tmp_path, "whole")
    for path, day in zip(exports[-2:], days):
        ing.ingest(whole, str(path), day)
    stepwise = isolated(stack, tmp_path, "stepwise")
    busy = []

    def another_run_meanwhile(name, batches):
        if name != INGEST_STEPS[-1]:  # the date stays leased to the run between its tasks
            with pytest.raises(Busy, match="nightly ingest of"):
                ing.ingest(stepwise, str(exports[-1]), days[-1])
            busy.append(name)

    done = _steps_one_by_one(stepwise, ing.plan_batches(stepwise, list(zip(days, map(str, exports[-2:]))), 0.25),
                             "hr_feature_pipeline/run-1", another_run_meanwhile)
    assert busy == list(INGEST_STEPS[:-1])
    assert [b["rejected"] for b in done] == ["", ""]
    assert layout.list_partitions(stepwise) == layout.list_partitions(whole) == days
    for day in days:
        ours, theirs = (layout.read_partition(s, day).drop_columns(["created_timestamp"]) for s in (stepwise, whole))
        assert ours.equals(theirs), day
        assert s3.list_keys(stepwise, layout.staging_prefix(stepwise, day)) == []
        assert not s3.exists(stepwise, layout.ingest_lock_key(stepwise, day)), "released by the last step"


def test_a_rejected_batch_stops_there_older_ones_are_published_newer_ones_not(stack, exports, tmp_path):
    settings = isolated(stack, tmp_path, "rejected")
    paths = exports[-3:]
    days = [date.fromisoformat(p.stem.removeprefix("hr_export_")) for p in paths]
    sources = [str(paths[0]), str(rejected_export(paths[1], tmp_path)), str(paths[2])]
    done = _steps_one_by_one(settings, ing.plan_batches(settings, list(zip(days, sources)), 0.25), "run-1")
    assert done[0]["rejected"] == "" and done[0]["features_uri"]
    assert done[1]["rejected"].startswith("validate_raw: ") and "JobSatisfaction" in done[1]["rejected"]
    assert done[2]["rejected"] == f"not ingested: the older export of {days[1]} was rejected"
    assert layout.list_partitions(settings) == days[:1]
    assert [k for d in days for k in s3.list_keys(settings, layout.ingest_lock_key(settings, d))] == []
