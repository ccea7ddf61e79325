"""Alert delivery to real receivers on 127.0.0.1: a webhook listener and an SMTP server."""

from __future__ import annotations

import asyncio
import email

import pytest
from aiosmtpd.controller import Controller

from conftest import free_port
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
    asyncio.run(alerts.deadline_missed(dag_id="hr_feature_pipeline", deadline="4h after queued",
                                       context={"dag_run": {"run_id": "scheduled__2026-11-24T02:00:00+00:00"}}))
    assert webhook.received[0]["kind"] == "deadline_missed"
    assert webhook.received[0]["run_id"] == "scheduled__2026-11-24T02:00:00+00:00"
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
