"""Image references and their digests (deploy/images.py): `python -m deploy pin-images` against a
real container registry (Debian's docker-registry, started per test, with Docker Hub's token flow
where it matters), and `python -m deploy validate --release`."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
import requests
import yaml

from deploy import images, validate
from tests.helpers import ROOT, dedicated_registry, free_port, push_image

WORKER = "sha256:" + "1" * 64
AIRFLOW = "sha256:" + "2" * 64
STORE = "deploy/k8s/online-store.yaml#3: StatefulSet redis-node spec.template.spec.containers"  # + [container]


def test_every_image_written_in_the_deployment_is_found():
    found = images.uses()
    by_file = {(use.path, str(use.reference)) for use in found}
    written = set()
    for dockerfile in (ROOT / "deploy").glob("Dockerfile.*"):
        written |= {(dockerfile, ref) for ref in re.findall(r"^FROM\s+(\S+)", dockerfile.read_text(), re.MULTILINE)}
    for folder in images.MANIFEST_FOLDERS:
        for manifest in (ROOT / folder).glob("*.yaml"):
            written |= {(manifest, ref) for ref in re.findall(r"^\s*image:\s*(\S+)", manifest.read_text(), re.MULTILINE)}
    assert written and written <= by_file, written - by_file
    assert sorted(use.where for use in found if use.path.parent.name == "helm-values") == sorted([
        "helm-values/airflow.yaml: defaultAirflowRepository", "helm-values/airflow.yaml: images.statsd.tag",
        "helm-values/airflow.yaml: images.pod_template.tag", "helm-values/airflow.yaml: env FP_WORKER_IMAGE"])
    built = {use.built for use in found if use.built}
    assert built == set(images.BUILT)


@pytest.mark.parametrize("text, registry, repository, tag, digest", [
    ("python:3.11-slim-bookworm", "registry-1.docker.io", "library/python", "3.11-slim-bookworm", None),
    ("docker.io/valkey/valkey:9.0-trixie", "registry-1.docker.io", "valkey/valkey", "9.0-trixie", None),
    ("valkey/valkey:9.0", "registry-1.docker.io", "valkey/valkey", "9.0", None),
    ("quay.io/prometheus/statsd-exporter:v0.30.0", "quay.io", "prometheus/statsd-exporter", "v0.30.0", None),
    (f"127.0.0.1:5000/library/python:3.11@{WORKER}", "127.0.0.1:5000", "library/python", "3.11", WORKER),
    ("localhost/worker:1", "localhost", "worker", "1", None),
])
def test_references_name_their_registry_and_repository(text, registry, repository, tag, digest):
    reference = images.Reference.parse(text)
    assert (reference.registry, reference.repository, reference.tag, reference.digest) == (registry, repository, tag, digest)
    assert str(reference) == text


@pytest.mark.parametrize("text, message", [
    ("python", "with a tag"),
    ("python@" + WORKER, "with a tag"),
    ("python:3.11@sha256:abc", "64 lowercase hex"),
    ("python:3.11@sha256:" + "A" * 64, "64 lowercase hex"),
])
def test_malformed_references_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        images.Reference.parse(text)


def test_set_scalar_changes_one_key_and_keeps_comments():
    text = (ROOT / "helm-values" / "airflow.yaml").read_text()
    changed = images.set_scalar(text, "images.statsd.tag", f'"v0.30.0@{WORKER}"')
    values = yaml.safe_load(changed)
    assert values["images"]["statsd"]["tag"] == f"v0.30.0@{WORKER}"
    assert values["images"]["pod_template"]["tag"] == "0.1.0"
    assert changed.count("\n") == text.count("\n")
    assert [line for line in changed.splitlines() if "#" in line] == [line for line in text.splitlines() if "#" in line]
    top = images.set_scalar(text, "defaultAirflowDigest", f'"{AIRFLOW}"')
    assert re.search(rf'^defaultAirflowDigest: "{AIRFLOW}"$', top, re.MULTILINE), top
    with pytest.raises(KeyError, match=r'add `digest: ""` under images.statsd'):
        images.set_scalar(text, "images.statsd.digest", '"x"')


def _deployment_copy(tmp_path, host: str):
    """deploy/ and helm-values/ copied, every image not built here served by the test's registry
    (same repositories and tags on another host)."""
    root = tmp_path / "checkout"
    shutil.copytree(ROOT / "deploy", root / "deploy", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "helm-values", root / "helm-values")
    for use in images.uses(root):
        if use.built:
            continue
        text = use.path.read_text()
        if use.path.name.startswith("Dockerfile"):
            text = text.replace(f"FROM {use.reference}", f"FROM {host}/{use.reference.repository}:{use.reference.tag}")
        elif use.tag_key:
            key = use.tag_key.rsplit(".", 1)[0] + ".repository"
            text = images.set_scalar(text, key, f"{host}/{use.reference.repository}")
        else:  # a manifest's `image:`
            written = rf"(image:\s*)\S*{re.escape(use.reference.repository)}:{re.escape(use.reference.tag)}(?=\s)"
            text, count = re.subn(written, rf"\g<1>{host}/{use.reference.repository}:{use.reference.tag}", text)
            assert count, use.where
        use.path.write_text(text)
    return root


def _serve_third_party(root, host: str, marker: str = "") -> dict[tuple[str, str], str]:
    """Push every image not built here to the registry; the digest each tag points to. Base images
    are multi-platform indexes, as on Docker Hub."""
    served = {}
    for use in images.uses(root):
        key = (use.reference.repository, use.reference.tag)
        if not use.built and key not in served:
            served[key] = push_image(host, *key, content=f"{key}{marker}".encode(), index="library/" in key[0])
    return served


def test_pin_images_records_every_digest_where_it_is_written(tmp_path):
    with dedicated_registry(tmp_path / "registry") as (host, _):
        root = _deployment_copy(tmp_path, host)
        served = _serve_third_party(root, host)
        before = {p: p.read_text() for p in root.rglob("*") if p.is_file()}
        assert len(validate.image_problems(release=True, root=root)) == len(images.uses(root))

        changes, missing = images.plan(images.uses(root), {"worker": WORKER, "airflow": AIRFLOW}, frozenset({host}),
                                       progress=lambda line: None)
        images.pin(changes)

        assert missing == []
        found = images.uses(root)
        assert images.unpinned(found) == []
        for use in found:
            expected = {"worker": WORKER, "airflow": AIRFLOW}.get(use.built) or served[
                (use.reference.repository, use.reference.tag)]
            assert use.reference.digest == expected, use.where
        assert validate.image_problems(release=True, root=root) == []
        # what Helm, kubectl and docker read: the charts' digest fields, tags carrying digests, references
        store = (root / "deploy" / "k8s" / "online-store.yaml").read_text()
        valkey = f"{host}/valkey/valkey:9.0-trixie@{served[('valkey/valkey', '9.0-trixie')]}"
        exporter = f"{host}/oliver006/redis_exporter:v1.90.0@{served[('oliver006/redis_exporter', 'v1.90.0')]}"
        assert re.findall(r"image: (\S+)", store) == [valkey, valkey, exporter]
        airflow = yaml.safe_load((root / "helm-values" / "airflow.yaml").read_text())
        assert airflow["defaultAirflowDigest"] == AIRFLOW
        assert airflow["images"]["pod_template"]["tag"] == f"0.1.0@{AIRFLOW}"
        assert airflow["images"]["statsd"]["tag"] == f"v0.30.0@{served[('prometheus/statsd-exporter', 'v0.30.0')]}"
        worker = f"ghcr.io/hr-feature-platform/worker:0.1.0@{WORKER}"
        assert {e["value"] for e in airflow["env"] if e["name"] == "FP_WORKER_IMAGE"} == {worker}
        serving = (root / "deploy" / "k8s" / "serving.yaml").read_text()
        assert re.findall(r"image: (\S+)", serving) == [worker, worker]
        assert re.findall(r"^FROM (\S+)", (root / "deploy" / "Dockerfile.worker").read_text(), re.MULTILINE) == [
            f"{host}/library/python:3.11-slim-bookworm@{served[('library/python', '3.11-slim-bookworm')]}"]
        # nothing but the image lines changed, and only in the files that name images
        for path, text in before.items():
            after = path.read_text()
            changed = [(a, b) for a, b in zip(text.splitlines(), after.splitlines()) if a != b]
            assert len(text.splitlines()) == len(after.splitlines()), path
            assert all("sha256:" in b for _, b in changed), (path, changed)

        again, missing = images.plan(found, {"worker": WORKER, "airflow": AIRFLOW}, frozenset({host}),
                                     progress=lambda line: None)
        assert (again, missing) == ([], [])

        # a tag moved (a rebuilt image): exactly its uses change, to what the tag serves now
        moved = push_image(host, "valkey/valkey", "9.0-trixie", content=b"rebuilt")
        again, _ = images.plan(found, {}, frozenset({host}), progress=lambda line: None)
        assert [(c.use.where, c.digest) for c in again] == [(f"{STORE}[{name}]", moved) for name in ("valkey", "sentinel")]


def test_registries_asking_for_bearer_tokens_are_answered_anonymously(tmp_path):
    """Docker Hub, GHCR and Quay answer 401 with a token realm; public images need no login."""
    with dedicated_registry(tmp_path / "registry", token_auth=True) as (host, issuer):
        push_token = requests.get(issuer.realm, params={"service": "test-registry",
                                                        "scope": "repository:library/python:pull,push"}).json()["token"]
        digest = push_image(host, "library/python", "3.11-slim-bookworm", b"base", index=True, token=push_token)
        assert requests.head(f"http://{host}/v2/library/python/manifests/3.11-slim-bookworm").status_code == 401
        issuer.requests.clear()

        reference = images.Reference.parse(f"{host}/library/python:3.11-slim-bookworm")
        assert images.resolve(reference, frozenset({host})) == digest
        assert issuer.requests == [{"service": "test-registry", "scope": "repository:library/python:pull"}]


def test_an_unknown_tag_is_a_clear_error(tmp_path):
    with dedicated_registry(tmp_path / "registry") as (host, _):
        with pytest.raises(images.RegistryError, match=r"answered 404 for the tag"):
            images.resolve(images.Reference.parse(f"{host}/library/python:0.0-nothing"), frozenset({host}))


def test_built_digests_must_be_digests():
    with pytest.raises(ValueError, match="sha256: and 64 hex"):
        images.plan([], {"worker": "0.1.0"})
    with pytest.raises(ValueError, match=r"the images built here are \['airflow', 'worker'\]"):
        images.plan([], {"api": WORKER})


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploy", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_checks_then_pins_then_finds_nothing_to_do(tmp_path):
    with dedicated_registry(tmp_path / "registry") as (host, _):
        root = _deployment_copy(tmp_path, host)
        _serve_third_party(root, host)
        common = ["--root", str(root), "--plain-http", host]

        check = _cli("pin-images", *common, "--check")
        assert check.returncode == 1, check.stderr
        assert f"WOULD PIN {STORE}[valkey]" in check.stdout
        assert "UNPINNED helm-values/airflow.yaml: env FP_WORKER_IMAGE" in check.stdout
        assert "--built worker=sha256:" in check.stdout
        assert images.unpinned(images.uses(root)) == images.uses(root)  # --check writes nothing

        pinned = _cli("pin-images", *common, "--built", f"worker={WORKER}", "--built", f"airflow={AIRFLOW}")
        assert pinned.returncode == 0, pinned.stdout + pinned.stderr
        assert f"recorded {len(images.uses(root))} digest(s)" in pinned.stdout
        assert f"resolving {host}/valkey/valkey:9.0-trixie on {host}" in pinned.stderr

        again = _cli("pin-images", *common, "--check")
        assert again.returncode == 0, again.stdout
        assert "0 digest(s) differ" in again.stdout


def test_cli_unreachable_registry_writes_nothing(tmp_path):
    host = f"127.0.0.1:{free_port()}"  # nothing listens there
    root = _deployment_copy(tmp_path, host)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    result = _cli("pin-images", "--root", str(root), "--plain-http", host, "--built", f"worker={WORKER}")
    assert result.returncode == 2
    assert f"could not reach {host}" in result.stderr
    assert "Nothing was written." in result.stderr
    assert "Traceback" not in result.stderr
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_validate_release_names_each_image_pulled_by_tag_and_its_fix():
    found = images.uses()
    problems = validate.image_problems(release=True)
    assert len(problems) == len(images.unpinned(found))
    for problem, use in zip(problems, images.unpinned(found)):
        assert problem.where == use.where
        fix = f"--built {use.built}=sha256:" if use.built else "reads the digest from its registry"
        assert "pulled by tag alone" in problem.message and fix in problem.message
    assert validate.image_problems(release=False) == []
    result = _cli("validate", "--release")
    assert result.returncode == (1 if problems else 0)
    assert f"{len(problems)} problem(s)" in result.stdout


def test_latest_and_two_digests_for_one_image_are_refused(tmp_path):
    root = tmp_path / "checkout"
    shutil.copytree(ROOT / "deploy", root / "deploy", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "helm-values", root / "helm-values")
    serving = root / "deploy" / "k8s" / "serving.yaml"
    text = serving.read_text()
    first = text.index("worker:0.1.0") + len("worker:0.1.0")
    serving.write_text(text[:first] + f"@{WORKER}" + text[first:])  # one of two places pinned
    dockerfile = root / "deploy" / "Dockerfile.worker"
    dockerfile.write_text(dockerfile.read_text().replace("FROM python:3.11-slim-bookworm", "FROM python:latest"))
    problems = [str(p) for p in validate.image_problems(root=root)]
    assert any("Dockerfile.worker:6: FROM: `latest` moves" in p for p in problems), problems
    assert any("ghcr.io/hr-feature-platform/worker:0.1.0 is written with different digests" in p for p in problems), problems


def test_readme_lists_every_image_and_who_maintains_it():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Images"):]
    section = section[:section.index("\n#", 4)]
    for use in images.uses():
        names = {use.reference.name, use.reference.name.removeprefix("docker.io/")}  # as written, or Docker's short form
        assert any(f"`{name}:{use.reference.tag}`" in section for name in names), \
            f"README's Images table does not list {use.reference.name}:{use.reference.tag}"


def test_a_build_stage_named_in_from_is_not_an_image(tmp_path):
    root = tmp_path / "checkout"
    shutil.copytree(ROOT / "helm-values", root / "helm-values")
    (root / "deploy" / "k8s").mkdir(parents=True)
    (root / "deploy" / "Dockerfile.worker").write_text(
        "FROM python:3.11-slim-bookworm AS build\nRUN true\nFROM build\nFROM --platform=linux/amd64 busybox:1.37 as tools\n")
    dockerfile_uses = [(u.where, str(u.reference)) for u in images.uses(root) if u.path.name == "Dockerfile.worker"]
    assert dockerfile_uses == [("deploy/Dockerfile.worker:1: FROM", "python:3.11-slim-bookworm"),
                               ("deploy/Dockerfile.worker:4: FROM", "busybox:1.37")]


def test_cli_lists_every_image_and_the_one_release_version(tmp_path):
    listing = _cli("images")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert len(lines) == len(images.uses())
    assert f"{STORE}[valkey]\tdocker.io/valkey/valkey:9.0-trixie\tregistry-1.docker.io" in lines
    assert any(line.endswith("\tbuilt here (worker)") for line in lines)
    assert _cli("images", "--version").stdout == "0.1.0\n"

    root = tmp_path / "checkout"
    shutil.copytree(ROOT / "deploy", root / "deploy", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "helm-values", root / "helm-values")
    ray = root / "deploy" / "ray" / "raycluster.yaml"
    ray.write_text(ray.read_text().replace("worker:0.1.0", "worker:0.2.0"))  # a version bumped in one place
    mixed = _cli("images", "--version", "--root", str(root))
    assert mixed.returncode == 1 and "written with 2 tags ['0.1.0', '0.2.0']" in mixed.stderr
    assert any("a release has one" in str(p) for p in validate.image_problems(root=root))
