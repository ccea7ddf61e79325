"""The GitHub workflows: the one that applies feature definitions (pull-request code never sees a
secret) and the release (images pushed, every digest recorded, nothing left to a tag)."""

from __future__ import annotations

import re

import pytest
import yaml

from deploy import images
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


RELEASE = ROOT / ".github" / "workflows" / "release.yml"


@pytest.mark.parametrize("workflow", sorted((ROOT / ".github" / "workflows").glob("*.yml")), ids=lambda p: p.name)
def test_actions_are_pinned_by_commit_sha(workflow):
    uses = re.findall(r"uses:\s*(\S+)", workflow.read_text())
    assert uses
    for action in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", action), f"{action} is not pinned by commit SHA"


def test_release_runs_on_tags_only_with_its_own_token():
    release = yaml.safe_load(RELEASE.read_text())
    assert release[True] == {"push": {"tags": ["v*"]}}  # YAML reads the `on:` key as True
    assert release["permissions"] == {"contents": "write", "packages": "write"}
    assert set(re.findall(r"secrets\.(\w+)", RELEASE.read_text())) == {"GITHUB_TOKEN"}


def test_release_pins_what_it_pushed_then_refuses_any_tag_alone():
    steps = yaml.safe_load(RELEASE.read_text())["jobs"]["images"]["steps"]
    runs = [str(step.get("run", "")) for step in steps]
    builds = {step["id"]: step["with"] for step in steps if "build-push-action" in str(step.get("uses"))}
    assert {name: (b["file"], b["push"]) for name, b in builds.items()} == {
        "worker": ("deploy/Dockerfile.worker", True), "airflow": ("deploy/Dockerfile.airflow", True)}
    for name, build in builds.items():  # the tags pushed are the images' names in the files
        assert build["tags"] == f"{images.BUILT[name]}:${{{{ steps.version.outputs.version }}}}"
    order = [next(i for i, run in enumerate(runs) if marker in run) for marker in (
        "deploy images --version", "deploy pin-images", "deploy validate --release", "git push origin")]
    assert order == sorted(order)
    pin = runs[order[1]]
    for name in images.BUILT:
        assert f'--built "{name}=${{{{ steps.{name}.outputs.digest }}}}"' in pin
    assert order[0] < min(i for i, step in enumerate(steps) if "build-push-action" in str(step.get("uses")))


def test_the_release_version_is_the_one_the_files_are_written_with():
    assert images.built_version(images.uses()) == "0.1.0"
