"""S3 access through boto3: one client factory, and writes that readers never see half-done.

An S3 object becomes visible only when its upload completes (a single PUT, or the final
CompleteMultipartUpload), so writing each unit of data as one object and replacing it whole
gives atomic, idempotent publication with no temporary names to clean up.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import boto3
import pyarrow.fs as pafs
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from core.settings import Settings

log = logging.getLogger(__name__)

# Multipart above 16 MiB: parts upload in parallel and the object appears only on completion.
TRANSFER = TransferConfig(multipart_threshold=16 * 1024 * 1024, multipart_chunksize=16 * 1024 * 1024, max_concurrency=4)


class StorageError(RuntimeError):
    """S3 is unreachable or refused an operation; the message says what to check."""


def client(settings: Settings):
    """The process's S3 client for these settings: built once (a boto3 client costs tens of
    milliseconds to build and is safe to share between threads) and again in a forked child, which
    must not use its parent's connections."""
    return _client(settings, os.getpid())


@functools.lru_cache(maxsize=8)
def _client(settings: Settings, pid: int):
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.aws_access_key_id,
        aws_secret_access_key=settings.aws_secret_access_key,
        # Bounded: a hung S3 fails a step in 3 x FP_S3_TIMEOUT_SECONDS, with a message.
        config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5,
                      read_timeout=settings.s3_timeout_seconds),
    )


@contextlib.contextmanager
def storage_errors(settings: Settings, doing: str):
    """Turn any S3 failure inside the block into a one-line StorageError saying what was being done."""
    try:
        yield
    except StorageError:
        raise
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise StorageError(f"S3 refused to {doing}: {error.get('Code', '')} {error.get('Message', '')}".rstrip()) from None
    except (BotoCoreError, Boto3Error) as exc:
        raise StorageError(f"S3 at {settings.s3_endpoint_url or 'AWS'} failed to {doing}: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:200] if str(exc) else 'no answer'}") from None


def arrow_filesystem(settings: Settings) -> pafs.S3FileSystem:
    """The same S3, for pyarrow datasets (reads of many partitions at once)."""
    return pafs.S3FileSystem(endpoint_override=settings.s3_endpoint_url, region=settings.s3_region,
                             access_key=settings.aws_access_key_id, secret_key=settings.aws_secret_access_key,
                             connect_timeout=5, request_timeout=settings.s3_timeout_seconds)


def ensure_bucket(settings: Settings) -> None:
    s3 = client(settings)
    try:
        s3.head_bucket(Bucket=settings.s3_bucket)
        return
    except EndpointConnectionError as exc:
        raise StorageError(
            f"cannot reach S3 at {settings.s3_endpoint_url or 'AWS'}: {exc}. "
            "Start the local stack with `make up`, or set FP_S3_ENDPOINT_URL."
        ) from exc
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code not in {"404", "NoSuchBucket", "NotFound"}:
            raise StorageError(f"S3 refused access to bucket {settings.s3_bucket!r} ({code}): check the credentials") from exc
    log.info("creating bucket s3://%s", settings.s3_bucket)
    s3.create_bucket(Bucket=settings.s3_bucket)


@dataclass(frozen=True)
class Written:
    uri: str
    size: int
    sha256: str


def put_bytes(settings: Settings, key: str, data: bytes, *, content_type: str = "application/octet-stream",
              metadata: dict[str, str] | None = None) -> Written:
    """Publish ``data`` at ``key`` as one object, replacing any previous version whole."""
    s3 = client(settings)
    extra: dict = {"ContentType": content_type, "Metadata": metadata or {}}
    if settings.s3_sse:
        extra["ServerSideEncryption"] = settings.s3_sse
    try:
        s3.upload_fileobj(io.BytesIO(data), settings.s3_bucket, key, ExtraArgs=extra, Config=TRANSFER)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        hint = " (set FP_S3_SSE= to disable server-side encryption if the target does not support it)" if "Encryption" in str(exc) else ""
        raise StorageError(f"could not write s3://{settings.s3_bucket}/{key}: {code} {exc}{hint}") from exc
    return Written(uri=f"s3://{settings.s3_bucket}/{key}", size=len(data), sha256=hashlib.sha256(data).hexdigest())


def get_bytes(settings: Settings, key: str) -> bytes:
    s3 = client(settings)
    return s3.get_object(Bucket=settings.s3_bucket, Key=key)["Body"].read()


def exists(settings: Settings, key: str) -> bool:
    s3 = client(settings)
    try:
        s3.head_object(Bucket=settings.s3_bucket, Key=key)
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
            return False
        raise


def list_keys(settings: Settings, prefix: str) -> list[str]:
    s3 = client(settings)
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=settings.s3_bucket, Prefix=prefix):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return keys


def read_source(settings: Settings, source: str) -> tuple[bytes, str]:
    """Bytes and file name of a local path or an s3:// URI."""
    if source.startswith("s3://"):
        bucket, key = parse_uri(source)
        if not bucket or not key or key.endswith("/") or ".." in key.split("/"):
            raise StorageError(f"{source}: expected s3://bucket/path/to/file, without '..'")
        try:
            body = client(settings).get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            what = {"NoSuchKey": "no such object", "NoSuchBucket": "no such bucket",
                    "AccessDenied": "access denied"}.get(code, code or "refused")
            raise StorageError(f"{source}: {what}") from None
        except (BotoCoreError, OSError) as exc:
            raise StorageError(f"{source}: S3 at {settings.s3_endpoint_url or 'AWS'} unreachable "
                               f"({type(exc).__name__})") from None
        return body, key.rsplit("/", 1)[-1]
    path = Path(source)
    if path.is_symlink():
        raise FileNotFoundError(f"refusing {source!r}: a symbolic link (exports must be regular files in the inbox)")
    if path.is_dir():
        raise FileNotFoundError(f"refusing {source!r}: a directory, not an export file")
    if not path.exists():
        raise FileNotFoundError(f"not found: {source!r}")
    if not path.is_file():
        raise FileNotFoundError(f"refusing {source!r}: not a regular file")
    return path.read_bytes(), path.name


def parse_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into (bucket, key)."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key
