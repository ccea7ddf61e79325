"""core.s3: one client per process and settings, and whole-object writes against the real S3 API."""

from __future__ import annotations

import os
from dataclasses import replace

from core import s3


def test_the_client_is_built_once_per_process_and_settings(stack):
    first = s3.client(stack)
    assert s3.client(stack) is first
    assert s3.client(replace(stack, s3_bucket=stack.s3_bucket + "-other")) is not first, "other settings, own client"

    # A forked child builds its own: it must not share its parent's connections.
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            child = s3.client(stack)
            ok = child is not first and s3.client(stack) is child and s3.exists(stack, "no/such/key") is False
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"


def test_an_object_is_written_whole_with_encryption_requested(stack):
    key = "tests/core/s3/object.bin"
    written = s3.put_bytes(stack, key, b"x" * 100, content_type="application/octet-stream", metadata={"rows": "1"})
    assert written.uri == f"s3://{stack.s3_bucket}/{key}" and written.size == 100
    assert s3.get_bytes(stack, key) == b"x" * 100 and s3.exists(stack, key)
    head = s3.client(stack).head_object(Bucket=stack.s3_bucket, Key=key)
    assert head["Metadata"] == {"rows": "1"} and head.get("ServerSideEncryption") == stack.s3_sse
    assert key in s3.list_keys(stack, "tests/core/s3/")
