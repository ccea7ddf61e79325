"""The serving limit: a minimal ASGI app doing the feature server's Redis read and nothing else.

    uvicorn bench.minimal_server:app --workers 2

POST a `/get-online-features` body; it reads each employee's hash fields with one pipelined HMGET
(Feast's layout, features.online) and answers a small JSON document. No registry, no protobuf
decoding, no framework: what an HTTP server on this machine can do around that read.
"""

from __future__ import annotations

import json
import os

import redis.asyncio as aioredis

from features import online

PROJECT = os.environ.get("FP_FEAST_PROJECT", "hr_attrition")
FIELDS = online.feature_fields()
_client = aioredis.Redis.from_url(os.environ.get("FP_REDIS_URL", "redis://127.0.0.1:6379/0"))


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    ids = json.loads(body)["entities"]["employee_id"] if body else [1]
    async with _client.pipeline(transaction=False) as pipe:
        for employee_id in ids:
            pipe.hmget(online.redis_key(PROJECT, employee_id), FIELDS)
        rows = await pipe.execute()
    payload = json.dumps({"found": [sum(v is not None for v in row) for row in rows]}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
