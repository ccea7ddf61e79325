"""Serving latency and throughput on loopback: `python -m bench serving`.

Three servers over the same Redis data: our read-only feature server (serving.FLAGS, as deployed),
the inference API in front of it (a prediction per request) and the limit, a minimal ASGI app
doing the same Redis read (bench/minimal_server.py, 2 workers like the feature server).

For each: the maximum rate, closed loop with enough connections to saturate the machine; then
latency at half that rate from independent paced clients (``paced``: below saturation, where
latency is the server's and not the queue's), with errors counted. Numbers are printed, never
asserted.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from datetime import date, datetime, timezone
from pathlib import Path

import httpx

from bench.measure import bench_settings
from core.settings import PROJECT_ROOT
from etl import generate as gen

EMPLOYEES, MONTHS = 2000, 24  # enough label times for a test period after the embargo
DURATION = "8s"
SATURATING_CONNECTIONS = 16
PACED_CLIENTS = 4


def _settings():
    return replace(bench_settings(), feast_project="bench_serving", s3_features_prefix="bench-serving/features",
                   s3_raw_prefix="bench-serving/raw")


def _env(settings, **extra) -> dict:
    return {**os.environ, "FP_S3_BUCKET": settings.s3_bucket, "FP_S3_FEATURES_PREFIX": settings.s3_features_prefix,
            "FP_S3_RAW_PREFIX": settings.s3_raw_prefix, "FP_FEAST_PROJECT": settings.feast_project,
            "FP_REGISTRY_URL": settings.registry_url, **extra}


def prepare(settings) -> int:
    """History ingested, materialized and a model promoted (once; cached in the bench bucket)."""
    from core import s3
    from pipeline import ingest as ing
    from features import online
    from features import store as fs
    from features.resources import Resources
    from training import model

    s3.ensure_bucket(settings)
    if model.latest_version(settings) is None:
        folder = settings.local_dir / "bench" / "serving-exports"
        end = date(datetime.now(timezone.utc).year, datetime.now(timezone.utc).month, 1)
        end = gen.previous_month_end(end)
        paths = gen.generate(folder, employees=EMPLOYEES, months=MONTHS, end=end, seed=5)
        for path in paths:
            ing.ingest(settings, str(path), date.fromisoformat(path.stem.removeprefix("hr_export_")), validate=False)
        resources = Resources.for_process(settings)
        fs.apply(resources)
        first = date.fromisoformat(paths[0].stem.removeprefix("hr_export_"))
        from etl import spec

        fs.materialize(resources, datetime.now(timezone.utc), start=spec.extraction_timestamp(first))
        result = model.train(resources)
        if not result.promoted:
            model.promote(settings, result.version)
    return online.served_roster(settings).active_ids()[0]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(argv: list[str], env: dict, health: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    out = open(log, "wb")
    proc = subprocess.Popen([*argv, "--port", str(port)], cwd=PROJECT_ROOT, env=env, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + health, timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"{' '.join(argv[1:])} did not start; see {log}")


def _hey_argv(url: str, connections: int, method: str = "GET", body: str | None = None,
              headers: dict | None = None, rate_per_connection: float | None = None, csv: bool = False) -> list[str]:
    argv = ["hey", "-z", DURATION, "-c", str(connections), "-m", method]
    if rate_per_connection:
        argv += ["-q", f"{rate_per_connection:.0f}"]
    if csv:
        argv += ["-o", "csv"]
    if body is not None:
        argv += ["-T", "application/json", "-d", body]
    for key, value in (headers or {}).items():
        argv += ["-H", f"{key}: {value}"]
    return [*argv, url]


def saturate(url: str, connections: int, **request) -> dict:
    """The maximum rate: ``connections`` connections in a closed loop."""
    out = subprocess.run(_hey_argv(url, connections, **request), capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    statuses = {int(c): int(n) for c, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", out)}
    errors = sum(n for c, n in statuses.items() if c != 200)
    if "Error distribution:" in out:  # transport errors: `[count]  Get "url": reason`
        errors += sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]\s", out.split("Error distribution:")[1], re.M))
    return {"rps": rps, "errors": errors}


def paced(url: str, rate: float, clients: int, **request) -> dict:
    """Latency at an offered ``rate``: ``clients`` independent paced clients (one hey process of one
    connection each), started a fraction of a period apart.

    One hey process with several paced connections ticks them all at the same instant: every tick
    is a burst of that many requests, which measures the server's queue, not the server. Separate
    clients with their own phase spread the arrivals as independent callers do. Latencies come from
    each request's own record (hey's CSV); any answer but 200 counts as an error, and a client that
    could not keep its pace shows as a rate below the offered one."""
    period = clients / rate
    started = time.monotonic()
    procs = []
    for i in range(clients):
        time.sleep(max(0.0, started + i * period / clients - time.monotonic()))
        procs.append(subprocess.Popen(_hey_argv(url, 1, rate_per_connection=rate / clients, csv=True, **request),
                                      stdout=subprocess.PIPE, text=True))
    latencies, errors = [], 0
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"hey failed with exit status {proc.returncode}")
        for row in csv.DictReader(io.StringIO(out)):
            latencies.append(float(row["response-time"]) * 1000)
            errors += row["status-code"] != "200"
    seconds = float(DURATION.removesuffix("s"))
    p50, p99 = (statistics.quantiles(latencies, n=100)[i] for i in (49, 98)) if len(latencies) > 1 else (None, None)
    return {"rps": len(latencies) / seconds, "p50": p50, "p99": p99, "errors": errors}


def measure(url: str, **request) -> dict:
    closed = saturate(url, SATURATING_CONNECTIONS, **request)
    half = paced(url, closed["rps"] / 2, PACED_CLIENTS, **request)
    return {"max_rps": closed["rps"], "max_errors": closed["errors"], "half_rps": half["rps"], "p50_ms": half["p50"],
            "p99_ms": half["p99"], "errors": half["errors"]}


def main() -> int:
    if shutil.which("hey") is None:
        raise SystemExit("the serving benchmark needs `hey` (Debian: apt-get install hey); `make bench` installs it")
    settings = _settings()
    print(f"\nServing on loopback: preparing {EMPLOYEES} employees x {MONTHS} months, a promoted model ...", flush=True)
    employee = prepare(settings)
    logs = settings.local_dir / "bench"
    token = "bench-" + os.urandom(8).hex()
    python = sys.executable
    procs = []
    try:
        fs_proc, fs_url = _start([python, "-m", "serving", "feature-server"], _env(settings), "/health",
                                 logs / "feature-server.log")
        procs.append(fs_proc)
        api_proc, api_url = _start([python, "-m", "serving", "api"],
                                   _env(settings, FP_FEATURE_SERVER_URL=fs_url, FP_API_TOKEN=token), "/readyz",
                                   logs / "api.log")
        procs.append(api_proc)
        minimal, minimal_url = _start([python, "-m", "uvicorn", "bench.minimal_server:app", "--workers", "2",
                                       "--no-access-log", "--loop", "uvloop", "--http", "httptools"],
                                      _env(settings), "/", logs / "minimal.log")
        procs.append(minimal)
        body = json.dumps({"feature_service": "attrition_model_v1", "entities": {"employee_id": [employee]}})
        results = {
            "limit: minimal ASGI app, same Redis read": measure(minimal_url + "/", method="POST", body=body),
            "feature server /get-online-features": measure(fs_url + "/get-online-features", method="POST", body=body),
            "inference API /v1/employees/{id}/attrition": measure(
                f"{api_url}/v1/employees/{employee}/attrition", headers={"Authorization": f"Bearer {token}"}),
        }
    finally:
        for proc in procs:
            os.killpg(proc.pid, 15)
    limit = results["limit: minimal ASGI app, same Redis read"]["max_rps"]
    print(f"  {'server':46} {'max req/s':>10} {'vs limit':>9} {'at req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'errors':>7}")
    for name, r in results.items():
        print(f"  {name:46} {r['max_rps']:>10,.0f} {r['max_rps'] / limit:>8.2f}x {r['half_rps']:>9,.0f} "
              f"{r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} {r['errors'] + r['max_errors']:>7}")
    print(f"  max: {SATURATING_CONNECTIONS} connections, closed loop, {DURATION}; latency: half the max rate, "
          f"{PACED_CLIENTS} independent paced clients (hey -q), {DURATION}; one employee per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
