"""What a process works with, built once from its settings and passed in: the S3 client, the
feature store and the online store's Redis client.

A command, a DAG task or the feature server calls ``Resources.for_process()`` once and hands the
object to the library functions (``features.store.materialize(resources, ...)``,
``training.model.train(resources)``); each client is built on first use and then shared. Tests
build ``Resources(settings)`` for settings of their own, or a second one for a reader that must
not share the first one's registry cache.

Feast's configuration is features/feature_store.yaml with its ``${...}`` values filled in from
the settings here, in memory: nothing is exported to ``os.environ``, so two Resources with
different settings in one process never see each other's configuration. The one process-wide
piece is the DuckDB connection Feast's offline store reads through (ibis's default backend):
building a store points it at that store's S3.

``FP_COMPUTE_ENGINE=ray`` swaps the yaml's engine and offline store for Feast's Ray compute engine
and Ray offline store (features/ray_engine.py), on the same S3 Parquet, registry and Redis. Ray Data
and s3fs take S3 access only from the standard AWS variables, so a Ray store sets those in its
process (and hands them to a local Ray's workers); that is the one case that touches the
environment.
"""

from __future__ import annotations

import functools
import os
import string
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from urllib.parse import urlparse

import yaml
from feast import FeatureStore
from feast.repo_config import RepoConfig

from core import s3
from core import settings as settings_mod
from core.settings import Settings

REPO_PATH = Path(__file__).resolve().parent
CONFIG_FILE = REPO_PATH / "feature_store.yaml"


@dataclass(frozen=True, eq=False)
class Resources:
    settings: Settings

    @classmethod
    def for_process(cls, settings: Settings | None = None) -> "Resources":
        """This process's resources for ``settings`` (default: the environment's), built once; a
        forked child builds its own, as it must not use its parent's connections."""
        return _for_process(settings or settings_mod.load(), os.getpid())

    @cached_property
    def s3(self):
        return s3.client(self.settings)

    @cached_property
    def store(self) -> FeatureStore:
        if self.settings.compute_engine == "ray":
            os.environ.update(self.settings.s3_env())
        else:
            configure_offline_engine(self.settings)
        return FeatureStore(repo_path=str(REPO_PATH), config=repo_config(self.settings))

    @cached_property
    def redis(self):
        """The online store's own client (its timeouts, retries and TLS), for direct key work."""
        store = self.store
        return store._get_provider().online_store._get_client(store.config.online_store)


@functools.lru_cache(maxsize=8)
def _for_process(settings: Settings, pid: int) -> Resources:
    return Resources(settings)


def repo_config(settings: Settings) -> RepoConfig:
    """features/feature_store.yaml with its variables taken from ``settings`` (the stock ``feast``
    CLI expands the same names from its environment instead)."""
    try:
        text = string.Template(CONFIG_FILE.read_text()).substitute(settings.feast_env())
    except KeyError as exc:
        raise SystemExit(f"{CONFIG_FILE} uses ${{{exc.args[0]}}}, which core.settings does not provide "
                         "(Settings.feast_env lists the names it fills in)") from None
    values = yaml.safe_load(text)
    if settings.compute_engine == "ray":
        from features import ray_engine

        values.update(ray_engine.engine_config(settings))
    config = RepoConfig(**values)
    config.repo_path = REPO_PATH
    return config


_offline_engine_configured = False


def ensure_offline_engine() -> None:
    """Configure the offline engine from the environment unless this process already did.

    A process that loads the repository without Resources (the stock ``feast`` CLI run in
    features/) gets the same S3 access from the same settings; one that built a store keeps what
    it chose."""
    if not _offline_engine_configured:
        configure_offline_engine(settings_mod.load())


def configure_offline_engine(settings: Settings) -> None:
    """Let the DuckDB offline store read our S3: httpfs from its PyPI package, our credentials.

    Feast's duckdb store reads through ibis's default DuckDB connection. The httpfs extension is
    loaded from the `duckdb-ext-httpfs` package (never downloaded: autoinstall is off), and an S3
    secret carries the endpoint, region and keys of core.settings. With no keys configured (an IAM
    role), DuckDB's credential chain is used.
    """
    import duckdb
    import ibis

    connection = ibis.duckdb.connect()
    raw = connection.con
    extensions = Path(duckdb.__file__).resolve().parent.parent / "duckdb_ext" / "extensions"
    raw.execute("SET autoinstall_known_extensions = false")
    raw.execute(f"SET extension_directory = {_sql_string(str(extensions))}")
    raw.execute("LOAD httpfs")
    options = [f"REGION {_sql_string(settings.s3_region)}"]
    if settings.aws_access_key_id and settings.aws_secret_access_key:
        options += [f"KEY_ID {_sql_string(settings.aws_access_key_id)}",
                    f"SECRET {_sql_string(settings.aws_secret_access_key)}"]
    if settings.s3_endpoint_url:
        endpoint = urlparse(settings.s3_endpoint_url)
        options += [f"ENDPOINT {_sql_string(endpoint.netloc)}", "URL_STYLE 'path'",
                    f"USE_SSL {'true' if endpoint.scheme == 'https' else 'false'}"]
    raw.execute(f"CREATE OR REPLACE SECRET feature_platform_s3 (TYPE s3, {', '.join(options)})")
    ibis.set_backend(connection)
    global _offline_engine_configured
    _offline_engine_configured = True


def _sql_string(value: str) -> str:
    """A DuckDB string literal (CREATE SECRET takes no bound parameters): quotes doubled."""
    return "'" + value.replace("'", "''") + "'"
