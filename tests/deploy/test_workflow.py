"""The GitHub workflow that applies feature definitions: pull-request code never sees a secret."""

from __future__ import annotations

import re

import yaml

from helpers import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "feature-definitions.yml"


def _workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def _push_only(job: dict) -> bool:
    condition = str(job.get("if", ""))
    return "github.event_name == 'push'" in condition and "refs/heads/main" in condition


def test_jobs_that_run_on_pull_requests_have_no_secrets():
    jobs = _workflow()["jobs"]
    pr_jobs = {name: job for name, job in jobs.items() if not _push_only(job)}
    assert pr_jobs, "the checks run on pull requests"
    for name, job in pr_jobs.items():
        assert "secrets." not in yaml.safe_dump(job), f"job {name} runs pull-request code and must hold no secret"


def test_apply_runs_on_main_only_behind_an_environment():
    jobs = _workflow()["jobs"]
    writers = {name: job for name, job in jobs.items() if "features apply" in yaml.safe_dump(job)
               and "FEAST_REGISTRY_URL" in yaml.safe_dump(job)}
    assert list(writers) == ["apply"]
    apply = writers["apply"]
    assert _push_only(apply) and apply.get("environment") and apply.get("needs") == "check"
    assert "secrets." not in yaml.safe_dump(apply.get("env", {})), "secrets are given to the steps that use them"


def test_actions_are_pinned_by_commit_sha():
    uses = re.findall(r"uses:\s*(\S+)", WORKFLOW.read_text())
    assert uses
    for action in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", action), f"{action} is not pinned by commit SHA"
