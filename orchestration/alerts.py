"""Alerts: one small notifier for task failures, retry exhaustion and missed deadlines.

Where alerts go comes from the settings (core.settings; in Kubernetes from a Secret):

* ``FP_ALERT_WEBHOOK_URL``: a URL that receives a JSON POST;
* ``FP_ALERT_FORMAT``: ``generic`` (default; the JSON document below) or ``slack`` (a Slack incoming
  webhook payload, ``{"text": ...}``);
* ``FP_ALERT_EMAIL_TO``: comma-separated addresses that also get each alert by email, through
  ``FP_SMTP_HOST`` / ``FP_SMTP_PORT`` (STARTTLS when ``FP_SMTP_STARTTLS`` is true; login with
  ``FP_SMTP_USER`` / ``FP_SMTP_PASSWORD`` when set), from ``FP_ALERT_EMAIL_FROM``.

With none set, alerts are logged only. The deadline callback is async: Airflow runs it in the
triggerer, which is where callbacks must run under the KubernetesExecutor.
"""

from __future__ import annotations

import asyncio
import json
import logging
import smtplib
import urllib.error
import urllib.parse
import urllib.request
from email.message import EmailMessage
from typing import Any

from airflow.sdk import BaseNotifier

from core import settings as settings_mod

log = logging.getLogger(__name__)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A webhook that answers with a redirect is a failed delivery: the alert is not re-sent elsewhere."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def webhook_host(url: str) -> str:
    """What may be logged of a webhook URL: its scheme and host. The path is the secret (Slack)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")


def render(alert: dict[str, Any], fmt: str) -> bytes:
    if fmt == "slack":
        lines = [f":rotating_light: *{alert['title']}*"]
        lines += [f"*{k}*: {v}" for k, v in alert.items() if k not in {"title", "kind"} and v not in (None, "")]
        return json.dumps({"text": "\n".join(lines)}).encode()
    return json.dumps(alert, default=str).encode()


def email(alert: dict[str, Any], settings: settings_mod.Settings) -> bool:
    """Mail one alert to FP_ALERT_EMAIL_TO, if set; return whether it was handed to the SMTP server."""
    recipients = list(settings.alert_email_to)
    if not recipients:
        return False
    message = EmailMessage()
    message["Subject"] = f"[hr-feature-platform] {alert['title']}"
    message["From"] = settings.alert_email_from
    message["To"] = ", ".join(recipients)
    message.set_content("\n".join(f"{k}: {v}" for k, v in alert.items() if v not in (None, "")))
    try:
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=10) as smtp:
            if settings.smtp_starttls:
                smtp.starttls()
            if settings.smtp_user:
                smtp.login(settings.smtp_user, settings.smtp_password or "")
            smtp.send_message(message)
        return True
    except (OSError, smtplib.SMTPException) as exc:
        log.error("could not email the alert to %s: %s", recipients, exc)
        return False


def post(alert: dict[str, Any]) -> bool:
    """Send one alert synchronously; return whether the webhook took it (failures are logged, not raised)."""
    settings = settings_mod.load()
    url, fmt = settings.alert_webhook_url, settings.alert_format
    log.error("ALERT %s", json.dumps(alert, default=str))
    email(alert, settings)
    if not url:
        return False
    request = urllib.request.Request(url, data=render(alert, fmt), headers={"Content-Type": "application/json"})
    try:
        with _OPENER.open(request, timeout=10) as response:
            return 200 <= response.status < 300
    except urllib.error.HTTPError as exc:
        log.error("the alert webhook at %s answered HTTP %s (redirects are not followed)", webhook_host(url), exc.code)
    except OSError as exc:
        log.error("could not deliver the alert to the webhook at %s: %s", webhook_host(url),
                  type(getattr(exc, "reason", exc)).__name__)
    return False


async def post_async(alert: dict[str, Any]) -> bool:
    import httpx  # already a dependency of Airflow; only the triggerer path needs it

    settings = settings_mod.load()
    url, fmt = settings.alert_webhook_url, settings.alert_format
    log.error("ALERT %s", json.dumps(alert, default=str))
    if settings.alert_email_to:
        await asyncio.to_thread(email, alert, settings)  # smtplib blocks; keep the triggerer's loop free
    if not url:
        return False
    try:
        async with httpx.AsyncClient(timeout=10, follow_redirects=False) as client:
            response = await client.post(url, content=render(alert, fmt), headers={"Content-Type": "application/json"})
    except httpx.HTTPError as exc:  # its message carries the URL: only the type is logged
        log.error("could not deliver the alert to the webhook at %s: %s", webhook_host(url), type(exc).__name__)
        return False
    if not response.is_success:
        log.error("the alert webhook at %s answered HTTP %s (redirects are not followed)", webhook_host(url),
                  response.status_code)
    return response.is_success


def _base_url() -> str:
    """The Airflow UI's address, as Airflow itself builds task log links from it ([api] base_url)."""
    from airflow.configuration import conf

    return conf.get("api", "base_url", fallback="http://localhost:8080/").rstrip("/")


def task_failure_alert(context: dict[str, Any]) -> dict[str, Any]:
    """Airflow calls on_failure_callback only when no retry follows: after the last try, or at once
    when the task failed fast (AirflowFailException: bad data, which a retry cannot fix)."""
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    max_tries = getattr(getattr(ti, "task", None), "retries", 0) + 1 if ti else None
    try_number = getattr(ti, "try_number", None)
    exception = context.get("exception")
    fail_fast = type(exception).__name__ == "AirflowFailException"
    return {
        "kind": "task_failed",
        "title": f"{getattr(ti, 'dag_id', '?')}.{getattr(ti, 'task_id', '?')} failed",
        "dag_id": getattr(ti, "dag_id", None),
        "task_id": getattr(ti, "task_id", None),
        "run_id": getattr(dag_run, "run_id", None) or getattr(ti, "run_id", None),
        "try": try_number,
        "max_tries": max_tries,
        "retry_follows": False,
        "why_no_retry": ("failed fast: retrying cannot fix this (see the error)" if fail_fast
                         else "every try failed" if try_number and max_tries and try_number >= max_tries
                         else "no retry configured"),
        "log_url": getattr(ti, "log_url", None),
        "error": f"{type(exception).__name__}: {exception}" if exception else None,
    }


class AlertNotifier(BaseNotifier):
    """on_failure_callback: the task failed after its last retry (Airflow calls it only then)."""

    template_fields = ()

    def notify(self, context):
        post(task_failure_alert(context))


async def deadline_missed(dag_id: str, deadline: str, context: dict | None = None, **_: Any) -> None:
    """AsyncCallback of the nightly DAG's Deadline Alert."""
    # Airflow passes the run as its REST representation, where the run id is `dag_run_id`.
    dag_run = (context or {}).get("dag_run") or {}
    if isinstance(dag_run, dict):
        run_id = dag_run.get("dag_run_id") or dag_run.get("run_id")
    else:
        run_id = getattr(dag_run, "run_id", None)
    fields = ("state", "queued_at", "start_date", "logical_date", "run_type")
    await post_async({
        "kind": "deadline_missed",
        "title": f"{dag_id} missed its deadline ({deadline})",
        "dag_id": dag_id,
        "run_id": run_id,
        "deadline": deadline,
        "deadline_time": str(((context or {}).get("deadline") or {}).get("deadline_time", "")) or None,
        "run": {k: dag_run.get(k) for k in fields} if isinstance(dag_run, dict) else None,
        "log_url": f"{_base_url()}/dags/{dag_id}/runs/{urllib.parse.quote(run_id)}" if run_id else None,
    })
