"""Alert delivery to real receivers on 127.0.0.1: a webhook listener and an SMTP server."""

from __future__ import annotations

import asyncio
import email

import pytest
from aiosmtpd.controller import Controller

from helpers import free_port
from orchestration import alerts


class Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's handler name
        self.messages.append((envelope.rcpt_tos, envelope.content.decode()))
        return "250 OK"


@pytest.fixture
def smtp(monkeypatch):
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    monkeypatch.setenv("FP_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("FP_SMTP_PORT", str(port))
    monkeypatch.setenv("FP_ALERT_EMAIL_TO", "oncall@example.com, data@example.com")
    yield inbox
    controller.stop()


def test_deadline_callback_reaches_webhook_and_email(smtp, webhook, monkeypatch):
    monkeypatch.setenv("FP_ALERT_WEBHOOK_URL", webhook.url)
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.org/")
    # The context as Airflow's scheduler builds it: the run in its REST form (run id: dag_run_id).
    asyncio.run(alerts.deadline_missed(dag_id="hr_feature_pipeline", deadline="4h after queued",
                                       context={"dag_run": {"dag_run_id": "scheduled__2026-11-24T02:00:00+00:00",
                                                            "state": "running"},
                                                "deadline": {"id": "d1", "deadline_time": "2026-11-24T06:00:00Z"}}))
    assert webhook.received[0]["kind"] == "deadline_missed"
    assert webhook.received[0]["run_id"] == "scheduled__2026-11-24T02:00:00+00:00"
    assert webhook.received[0]["log_url"] == \
        "https://airflow.example.org/dags/hr_feature_pipeline/runs/scheduled__2026-11-24T02%3A00%3A00%2B00%3A00"
    assert webhook.received[0]["run"]["state"] == "running"
    recipients, body = smtp.messages[0]
    message = email.message_from_string(body)
    assert recipients == ["oncall@example.com", "data@example.com"]
    assert " ".join(message["Subject"].split()) == "[hr-feature-platform] hr_feature_pipeline missed its deadline (4h after queued)"
    assert "run_id: scheduled__2026-11-24T02:00:00+00:00" in message.get_payload()


def test_slack_format(webhook, monkeypatch):
    monkeypatch.setenv("FP_ALERT_WEBHOOK_URL", webhook.url)
    monkeypatch.setenv("FP_ALERT_FORMAT", "slack")
    assert alerts.post({"kind": "task_failed", "title": "hr_feature_pipeline.validate_raw failed",
                        "error": "ValidationFailed: column JobSatisfaction", "log_url": "http://airflow/log"})
    text = webhook.received[0]["text"]
    assert text.startswith(":rotating_light: *hr_feature_pipeline.validate_raw failed*")
    assert "*error*: ValidationFailed: column JobSatisfaction" in text


def test_unreachable_receivers_are_logged_not_raised(monkeypatch, caplog):
    monkeypatch.setenv("FP_ALERT_WEBHOOK_URL", f"http://127.0.0.1:{free_port()}/alerts")
    monkeypatch.setenv("FP_ALERT_EMAIL_TO", "oncall@example.com")
    monkeypatch.setenv("FP_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("FP_SMTP_PORT", str(free_port()))
    assert alerts.post({"kind": "task_failed", "title": "t"}) is False
    assert "could not deliver the alert" in caplog.text and "could not email the alert" in caplog.text


class Redirector:
    """A webhook on 127.0.0.1 that answers every POST with a redirect to a second listener."""

    def __init__(self, target: str):
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(302)
                self.send_header("Location", target)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.mark.parametrize("send", ["sync", "async"])
def test_the_webhook_secret_is_never_logged_and_redirects_are_not_followed(webhook, monkeypatch, caplog, send):
    secret_path = "/services/T000/B000/XXXXsecretXXXX"
    redirector = Redirector(webhook.url)
    try:
        for url in (f"http://127.0.0.1:{redirector.port}{secret_path}", f"http://127.0.0.1:{free_port()}{secret_path}"):
            monkeypatch.setenv("FP_ALERT_WEBHOOK_URL", url)
            alert = {"kind": "task_failed", "title": "t"}
            delivered = alerts.post(alert) if send == "sync" else asyncio.run(alerts.post_async(alert))
            assert delivered is False
    finally:
        redirector.server.shutdown()
    assert webhook.received == [], "the redirect target never receives the alert"
    assert "answered HTTP 302" in caplog.text and "could not deliver the alert" in caplog.text
    assert f"http://127.0.0.1:{redirector.port}" in caplog.text
    assert "XXXXsecretXXXX" not in caplog.text and "/services/" not in caplog.text
