"""The Feast feature store as the pipeline uses it: apply, materialize, serve only active employees.

Feast reads its configuration from features/feature_store.yaml, whose values come from the
environment; ``open_store`` exports them from core.settings first, so a laptop and a pod load the
same repository the same way.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import s3fs
from feast import FeatureStore
from feast.infra.online_stores.helpers import _mmh3, _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from core.settings import Settings
from etl import features as spec

log = logging.getLogger(__name__)

REPO_PATH = Path(__file__).resolve().parent
FEATURE_VIEW = "employee_features"
FEATURE_SERVICE = "attrition_model_v1"


def open_store(settings: Settings) -> FeatureStore:
    settings.export_to_environ()
    return FeatureStore(repo_path=str(REPO_PATH))


def forget_cached_listings() -> None:
    """Drop s3fs's per-process listing and ETag cache before reading the offline store.

    A re-ingested date replaces its partition object; a long-lived process (an Airflow worker,
    a notebook) would otherwise fail with FileExpired on the old ETag or miss new partitions.
    """
    s3fs.S3FileSystem.clear_instance_cache()


def apply(store: FeatureStore, settings: Settings) -> list[str]:
    from features.definitions import build  # Feast object construction is only needed when applying

    objects = list(build(settings))
    store.apply(objects)
    names = [f"{type(o).__name__} {o.name}" for o in objects]
    log.info("applied %s", ", ".join(names))
    return names


def _s3_filesystem(settings: Settings) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(
        endpoint_override=settings.s3_endpoint_url, region=settings.s3_region,
        access_key=settings.aws_access_key_id, secret_key=settings.aws_secret_access_key,
    )


def entities_to_retire(settings: Settings, up_to: datetime) -> tuple[set[int], set[int]]:
    """(active ids, ids not to be served) as of the latest extraction at or before ``up_to``.

    An employee stops being served once their latest row says they left, or once they are absent
    from the latest extraction (they left in a batch that was never ingested).
    """
    dataset = pads.dataset(f"{settings.s3_bucket}/{settings.s3_features_prefix}", format="parquet",
                           filesystem=_s3_filesystem(settings), partitioning="hive")
    table = dataset.to_table(columns=[spec.ENTITY_KEY, spec.TIMESTAMP, spec.ACTIVE],
                             filter=pc.field(spec.TIMESTAMP) <= up_to)
    if table.num_rows == 0:
        return set(), set()
    latest_extraction = pc.max(table[spec.TIMESTAMP])
    in_latest = table.filter(pc.equal(table[spec.TIMESTAMP], latest_extraction))
    active = set(in_latest.filter(in_latest[spec.ACTIVE])[spec.ENTITY_KEY].to_pylist())
    everyone = set(pc.unique(table[spec.ENTITY_KEY]).to_pylist())
    return active, everyone - active


def retire(store: FeatureStore, employee_ids: set[int]) -> int:
    """Remove these employees' `employee_features` values from Redis, in Feast's own key layout."""
    if not employee_ids:
        return 0
    config = store.config
    view = store.get_feature_view(FEATURE_VIEW)
    fields = [_mmh3(f"{view.name}:{f.name}") for f in view.features] + [f"_ts:{view.name}".encode()]
    client = store._get_provider().online_store._get_client(config.online_store)
    removed = 0
    ids = sorted(employee_ids)
    for start in range(0, len(ids), 5000):
        with client.pipeline(transaction=False) as pipe:
            for employee_id in ids[start:start + 5000]:
                key = EntityKeyProto(join_keys=[spec.ENTITY_KEY], entity_values=[ValueProto(int64_val=employee_id)])
                pipe.hdel(_redis_key(config.project, key, config.entity_key_serialization_version), *fields)
            removed += sum(1 for n in pipe.execute() if n)
    return removed


@dataclass(frozen=True)
class MaterializeResult:
    mode: str
    end: str
    seconds: float
    active: int
    retired: int

    def summary(self) -> str:
        return (f"materialized {FEATURE_VIEW} ({self.mode}) up to {self.end} in {self.seconds:.1f}s; "
                f"{self.active} active employees served, {self.retired} leavers removed from the online store")


def materialize(store: FeatureStore, settings: Settings, end: datetime, start: datetime | None = None) -> MaterializeResult:
    """Incremental (from the last watermark) when ``start`` is None, else the explicit window.

    Leavers are removed from Redis right after, in the same step, so they are never served
    beyond the run that saw them leave.
    """
    started = time.perf_counter()
    forget_cached_listings()
    if start is None:
        store.materialize_incremental(end_date=end, feature_views=[FEATURE_VIEW])
        mode = "incremental"
    else:
        store.materialize(start_date=start, end_date=end, feature_views=[FEATURE_VIEW])
        mode = f"window from {start.isoformat()}"
    active, leavers = entities_to_retire(settings, end)
    retired = retire(store, leavers)
    result = MaterializeResult(mode, end.isoformat(), time.perf_counter() - started, len(active), retired)
    log.info(result.summary())
    return result


class ServingError(RuntimeError):
    """Online features are missing or do not match what the model expects."""


def feature_refs(store: FeatureStore, service_name: str = FEATURE_SERVICE) -> list[str]:
    """The service's features as `view:feature`, in the order the service declares them."""
    service = store.get_feature_service(service_name)
    return [f"{p.name_to_use()}:{f.name}" for p in service.feature_view_projections for f in p.features]


def online_vectors(store: FeatureStore, employee_ids: list[int], service_name: str = FEATURE_SERVICE) -> dict[int, list]:
    """Each employee's online feature vector in the service's declared order, assembled by name.

    Never relies on the order of Feast's response; an employee with no online values is an error.
    """
    refs = feature_refs(store, service_name)
    names = [r.split(":", 1)[1] for r in refs]
    response = store.get_online_features(
        features=store.get_feature_service(service_name),
        entity_rows=[{spec.ENTITY_KEY: int(i)} for i in employee_ids],
    ).to_dict()
    vectors: dict[int, list] = {}
    missing = []
    for row, employee_id in enumerate(response[spec.ENTITY_KEY]):
        vector = [response[name][row] for name in names]
        if all(v is None for v in vector):
            missing.append(employee_id)
        vectors[employee_id] = vector
    if missing:
        raise ServingError(f"no online features for employee(s) {missing[:10]} "
                           f"({len(missing)} of {len(employee_ids)}): not active, or not materialized yet")
    return vectors


