"""Where each kind of object lives on S3: the one place that spells out keys.

    <raw prefix>/extraction_date=D/<sha256[:16]>-<file name>      raw export, as received, never modified
    staging/<features prefix>/extraction_date=D/<run>.parquet      features awaiting validation, one key per run
    <features prefix>/extraction_date=D/part-0.parquet             published features (what Feast reads)
    <quarantine prefix>/<suite>/extraction_date=D/<run id>/        rejected batches with reason.json
    validation-reports/<suite>/extraction_date=D/<run id>/         Data Docs of every validation
    locks/<features prefix>/extraction_date=D                      the lease of the run ingesting D (core.lease)
    online/<feast project>/served.json                             the extraction Redis serves (written last)
    models/attrition/<version>/, models/attrition/latest.json      model artifacts, the promoted model
"""

from __future__ import annotations

import hashlib
import io
import json
from datetime import date

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from core import s3
from core.settings import Settings
from etl.spec import FINGERPRINTS_KEY

PARTITION_FILE = "part-0.parquet"
MODEL_PREFIX = "models/attrition"
LATEST_MODEL_POINTER = f"{MODEL_PREFIX}/latest.json"


def partition_prefix(settings: Settings, as_of: date) -> str:
    return f"{settings.s3_features_prefix}/extraction_date={as_of.isoformat()}/"


def partition_key(settings: Settings, as_of: date) -> str:
    return partition_prefix(settings, as_of) + PARTITION_FILE


def staging_key(settings: Settings, as_of: date, run: str) -> str:
    """Each run stages under a key of its own: two ingests of one date never share (or delete) one."""
    return f"staging/{partition_prefix(settings, as_of)}{run}.parquet"


def staging_prefix(settings: Settings, as_of: date) -> str:
    return f"staging/{partition_prefix(settings, as_of)}"


def ingest_lock_key(settings: Settings, as_of: date) -> str:
    return f"locks/{partition_prefix(settings, as_of).rstrip('/')}"


def raw_prefix(settings: Settings, as_of: date) -> str:
    return f"{settings.s3_raw_prefix}/extraction_date={as_of.isoformat()}/"


def raw_key(settings: Settings, as_of: date, data: bytes, file_name: str) -> str:
    from etl.schema import safe_name

    digest = hashlib.sha256(data).hexdigest()[:16]
    return f"{raw_prefix(settings, as_of)}{digest}-{safe_name(file_name)}"


def features_dataset(settings: Settings) -> pads.Dataset:
    """Every published features partition as one pyarrow dataset (hive-partitioned by date)."""
    return pads.dataset(f"{settings.s3_bucket}/{settings.s3_features_prefix}", format="parquet",
                        filesystem=s3.arrow_filesystem(settings), partitioning="hive")


def list_partitions(settings: Settings) -> list[date]:
    """Extraction dates that have a published features partition, oldest first."""
    dates = set()
    for key in s3.list_keys(settings, settings.s3_features_prefix + "/"):
        part = key[len(settings.s3_features_prefix) + 1:].split("/", 1)[0]
        if part.startswith("extraction_date=") and key.endswith(PARTITION_FILE):
            dates.add(date.fromisoformat(part.split("=", 1)[1]))
    return sorted(dates)


def read_partition(settings: Settings, as_of: date, columns: list[str] | None = None) -> pa.Table:
    """One published features partition."""
    return pq.read_table(io.BytesIO(s3.get_bytes(settings, partition_key(settings, as_of))), columns=columns)


def recorded_fingerprints(schema: pa.Schema) -> dict[str, str]:
    """{feature: fingerprint} a partition's schema records ({} for one written before they were)."""
    return json.loads((schema.metadata or {}).get(FINGERPRINTS_KEY, b"{}"))


def partition_fingerprints(settings: Settings) -> dict[date, dict[str, str]]:
    """{extraction date: {feature: fingerprint}} of every published partition, from the Parquet
    footers ({} for a partition written before fingerprints were recorded)."""
    try:
        fragments = list(features_dataset(settings).get_fragments())
    except FileNotFoundError:  # nothing was ever published under the prefix
        return {}
    except OSError as exc:  # pyarrow's S3 errors: unreachable, refused
        raise s3.StorageError(f"could not read {settings.features_uri}: {str(exc).splitlines()[0][:300]}") from None
    found = {}
    for fragment in fragments:
        part = fragment.path.rsplit("/", 2)[-2]
        if not part.startswith("extraction_date=") or not fragment.path.endswith(PARTITION_FILE):
            continue
        found[date.fromisoformat(part.split("=", 1)[1])] = recorded_fingerprints(fragment.physical_schema)
    return dict(sorted(found.items()))


def served_state_key(settings: Settings) -> str:
    """Which extraction the online store serves; materialization writes it after Redis is complete."""
    return f"online/{settings.feast_project}/served.json"
