"""A lease on an S3 key: one holder at a time, across machines, with no lock server.

Taken with a conditional PUT (``If-None-Match: *``: only one writer can create the key), renewed
by its holder every third of its duration with ``If-Match`` on its own version, and released by
deleting it. A holder that died (kill -9, a lost pod) stops renewing: its lease expires and the
next run takes it over with ``If-Match`` on the expired version, so two runs can never both take
it. On the holder's own machine a dead process is noticed at once (its pid is gone).

    with Lease(settings, "locks/ingest/2026-10-31", "ingest of 2026-10-31") as lease:
        ...                # long work
        lease.check()      # before the step that must happen once: raises LeaseLost if taken over

A lease can also span processes: with a ``holder`` (the nightly DAG passes its run id), a later
process of the same holder resumes it with ``acquire()``, and ``suspend()`` stops renewing without
releasing, so that the lease waits for the next step. Such a lease is judged by its expiry only,
not by the pid that last renewed it (that process has ended by design).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from datetime import datetime, timedelta, timezone

from botocore.exceptions import ClientError

from core import s3
from core.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_SECONDS = 120.0
_CONFLICT = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}


class Busy(RuntimeError):
    """Another live run holds the lease; the message says which, since when and until when."""


class LeaseLost(RuntimeError):
    """The lease expired and another run took it over while this one was still working."""


def _conflict(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code", "") in _CONFLICT


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    def __init__(self, settings: Settings, key: str, what: str, seconds: float = DEFAULT_SECONDS,
                 holder: str | None = None):
        self.settings, self.key, self.what, self.seconds, self.holder = settings, key, what, seconds, holder
        self.client = s3.client(settings)
        self.etag: str | None = None
        self.lost: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    @property
    def uri(self) -> str:
        return f"s3://{self.settings.s3_bucket}/{self.key}"

    def _body(self) -> bytes:
        now = datetime.now(timezone.utc)
        return json.dumps({"what": self.what, "host": socket.gethostname(), "pid": os.getpid(), "holder": self.holder,
                           "renewed": now.isoformat(), "expires": (now + timedelta(seconds=self.seconds)).isoformat()
                           }).encode()

    def _put(self, **condition) -> str:
        if self.settings.s3_sse:
            condition["ServerSideEncryption"] = self.settings.s3_sse
        return self.client.put_object(Bucket=self.settings.s3_bucket, Key=self.key, Body=self._body(),
                                      ContentType="application/json", **condition)["ETag"]

    def acquire(self) -> Lease:
        try:
            self.etag = self._put(IfNoneMatch="*")
        except ClientError as exc:
            if not _conflict(exc):
                raise
            self._take_over()
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name=f"lease {self.key}", daemon=True)
        self._renewer.start()
        log.info("holding %s (%s)", self.uri, self.what)
        return self

    def _take_over(self) -> None:
        try:
            current = self.client.get_object(Bucket=self.settings.s3_bucket, Key=self.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:  # released meanwhile
                self.etag = self._put(IfNoneMatch="*")
                return
            raise
        holder = json.loads(current["Body"].read())
        expires = datetime.fromisoformat(holder["expires"])
        ours = self.holder is not None and holder.get("holder") == self.holder
        # A lease spanning processes outlives the pid that last renewed it: only its expiry counts.
        dead_here = (not holder.get("holder") and holder.get("host") == socket.gethostname()
                     and not _pid_alive(int(holder.get("pid", 0))))
        if expires > datetime.now(timezone.utc) and not dead_here and not ours:
            left = (expires - datetime.now(timezone.utc)).total_seconds()
            raise Busy(f"another run holds {self.uri}: {holder['what']} by pid {holder['pid']} on {holder['host']} "
                       f"(renewed {holder['renewed']}); nothing was done. Re-run after it ends; if it died, its "
                       f"lease expires in {left:.0f} s")
        try:
            self.etag = self._put(IfMatch=current["ETag"])
        except ClientError as exc:
            if _conflict(exc):
                raise Busy(f"another run took over {self.uri} at the same moment; nothing was done") from None
            raise
        if ours:
            log.info("resumed %s (%s)", self.uri, self.what)
            return
        reason = "its process is gone" if dead_here else f"it expired at {holder['expires']}"
        log.warning("took over %s from pid %s on %s: %s", self.uri, holder["pid"], holder["host"], reason)

    def renew(self) -> None:
        try:
            self.etag = self._put(IfMatch=self.etag)
        except ClientError as exc:
            if _conflict(exc):
                self.lost = f"{self.uri} was taken over by another run (this run's lease had expired)"
            raise

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self.renew()
            except ClientError:
                if self.lost:
                    log.error("%s", self.lost)
                    return
                log.warning("could not renew %s; retrying", self.uri, exc_info=True)

    def check(self) -> None:
        """Raise LeaseLost if another run has taken the lease over; call before a step that must happen once."""
        if not self.lost:
            try:
                self.renew()  # proves the lease is still this run's
            except ClientError:
                if not self.lost:
                    raise
        if self.lost:
            raise LeaseLost(self.lost)

    def suspend(self) -> None:
        """Stop renewing and keep the lease: the same holder resumes it in its next process, and
        if none does, it expires ``seconds`` after the last renewal."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(5)
        self._renewer = None

    def release(self) -> None:
        self.suspend()
        if self.lost or self.etag is None:
            return
        try:
            head = self.client.head_object(Bucket=self.settings.s3_bucket, Key=self.key)
            if head["ETag"] == self.etag:
                self.client.delete_object(Bucket=self.settings.s3_bucket, Key=self.key)
        except ClientError:
            log.warning("could not release %s; it expires in %.0f s", self.uri, self.seconds, exc_info=True)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
