"""Every container image the deployment runs, and the digest each is pinned to.

Images are written where the tools that pull them read them: the Dockerfiles' ``FROM`` lines, the
Helm values (the Airflow chart's ``defaultAirflowDigest``, or a tag carrying
``@sha256:...`` where a chart has no digest field) and the manifests' ``image:`` fields. This module
finds every one of them (``uses``), says which a release would still pull by tag alone
(``unpinned``) and records digests in place (``pin``):

* an image built from this repository (the worker and Airflow images) gets the digest its push
  printed, given by whoever pushed it (``--built worker=sha256:...``);
* any other image gets the digest its registry serves for its tag now, read over the OCI
  distribution API (a HEAD on the manifest, anonymous bearer tokens as ``docker pull`` gets them).

A tag can be moved to other content; a digest cannot. Tags stay next to the digests so a person
can read what is deployed, and ``pin --check`` says when a tag has moved (a rebuilt base image,
say) so the digests can be brought forward on purpose.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
MANIFEST_FOLDERS = ("deploy/k8s", "deploy/ray")  # relative to a checkout's root

# Images built from this repository: name -> repository (deploy/Dockerfile.<name>).
BUILT = {"worker": "ghcr.io/hr-feature-platform/worker", "airflow": "ghcr.io/hr-feature-platform/airflow"}

# Airflow chart: (repository key, tag key) pairs whose tag carries the digest (no digest field in
# the chart's schema for them), and the default image's own digest key.
AIRFLOW_VALUES = "airflow.yaml"
AIRFLOW_TAGGED = [("images.statsd.repository", "images.statsd.tag"),
                  ("images.pod_template.repository", "images.pod_template.tag")]
AIRFLOW_DEFAULT = ("defaultAirflowRepository", "defaultAirflowTag", "defaultAirflowDigest")
WORKER_IMAGE_SETTING = "FP_WORKER_IMAGE"

REQUEST_TIMEOUT = 30  # seconds, per request to a registry or its token service
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
REFERENCE = re.compile(r"(?P<name>[a-z0-9][a-z0-9._/:-]*?)(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>[^@\s]+))?")
MANIFEST_ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])


class RegistryError(RuntimeError):
    """A registry did not say what a tag points to."""


@dataclass(frozen=True)
class Reference:
    name: str                 # as written: "python", "docker.io/valkey/valkey", "ghcr.io/org/worker"
    tag: str
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        match = REFERENCE.fullmatch(str(text).strip())
        if not match or not match.group("tag"):
            raise ValueError(f"{text!r} is not an image reference with a tag (name:tag or name:tag@sha256:...)")
        digest = match.group("digest")
        if digest is not None and not DIGEST.fullmatch(digest):
            raise ValueError(f"{text!r}: a digest is sha256: and 64 lowercase hex digits")
        return cls(match.group("name"), match.group("tag"), digest)

    def __str__(self) -> str:
        return f"{self.name}:{self.tag}" + (f"@{self.digest}" if self.digest else "")

    def with_digest(self, digest: str | None) -> Reference:
        return Reference(self.name, self.tag, digest)

    @property
    def registry(self) -> str:
        first, _, rest = self.name.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost"):
            return "registry-1.docker.io" if first == "docker.io" else first
        return "registry-1.docker.io"

    @property
    def repository(self) -> str:
        """The repository path on its registry (Docker Hub's official images live under library/)."""
        first, _, rest = self.name.partition("/")
        path = rest if rest and ("." in first or ":" in first or first == "localhost") else self.name
        return f"library/{path}" if self.registry == "registry-1.docker.io" and "/" not in path else path


@dataclass(frozen=True)
class ImageUse:
    where: str                # "helm-values/airflow.yaml: images.statsd.tag"
    path: Path
    reference: Reference
    built: str | None = None  # a key of BUILT when this repository builds the image
    digest_key: str | None = None  # values key holding the digest (the chart's defaultAirflowDigest)
    tag_key: str | None = None     # values key whose tag carries the digest (a chart without a digest field)
    # neither: the reference is written whole (a Dockerfile, a manifest, an environment variable)

    @property
    def pinned(self) -> bool:
        return self.reference.digest is not None


def _get(values: dict, dotted: str):
    node = values
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _built(name: str) -> str | None:
    return next((key for key, repository in BUILT.items() if name == repository), None)


def _pod_images(node, path=""):
    """(where, image) of every container in a manifest: Deployments, pod templates, RayClusters."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in {"containers", "initContainers"} and isinstance(value, list):
                for index, container in enumerate(value):
                    if isinstance(container, dict) and "image" in container:
                        yield f"{path}.{key}[{container.get('name', index)}]", container["image"]
            else:
                yield from _pod_images(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _pod_images(item, f"{path}[{index}]")


def uses(root: Path = ROOT) -> list[ImageUse]:
    """Every image reference of the deployment under ``root`` (the repository, or a copy of it)."""
    found = []
    for dockerfile in sorted((root / "deploy").glob("Dockerfile.*")):
        stages = set()  # `FROM <earlier stage>` names no image
        for number, line in enumerate(dockerfile.read_text().splitlines(), 1):
            match = re.match(r"FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
            if match and match.group(1) not in stages:
                found.append(ImageUse(f"{dockerfile.relative_to(root)}:{number}: FROM", dockerfile,
                                      Reference.parse(match.group(1))))
            if match and match.group(2):
                stages.add(match.group(2))
    values_dir = root / "helm-values"
    airflow_file = values_dir / AIRFLOW_VALUES
    airflow = yaml.safe_load(airflow_file.read_text()) or {}
    repository, tag, digest = (_get(airflow, key) for key in AIRFLOW_DEFAULT)
    found.append(ImageUse(f"helm-values/{AIRFLOW_VALUES}: {AIRFLOW_DEFAULT[0]}", airflow_file,
                          Reference.parse(f"{repository}:{tag}").with_digest(digest or None),
                          _built(repository), digest_key=AIRFLOW_DEFAULT[2]))
    for repository_key, tag_key in AIRFLOW_TAGGED:
        reference = Reference.parse(f"{_get(airflow, repository_key)}:{_get(airflow, tag_key)}")
        found.append(ImageUse(f"helm-values/{AIRFLOW_VALUES}: {tag_key}", airflow_file, reference,
                              _built(reference.name), tag_key=tag_key))
    for entry in airflow.get("env") or []:
        if entry.get("name") == WORKER_IMAGE_SETTING:
            reference = Reference.parse(entry["value"])
            found.append(ImageUse(f"helm-values/{AIRFLOW_VALUES}: env {WORKER_IMAGE_SETTING}", airflow_file,
                                  reference, _built(reference.name)))
    for folder in MANIFEST_FOLDERS:
        for manifest in sorted((root / folder).glob("*.yaml")):
            for index, doc in enumerate(yaml.safe_load_all(manifest.read_text())):
                for where, image in _pod_images(doc or {}):
                    reference = Reference.parse(image)
                    found.append(ImageUse(f"{manifest.relative_to(root)}#{index}: {(doc or {}).get('kind')} "
                                          f"{((doc or {}).get('metadata') or {}).get('name')} {where}",
                                          manifest, reference, _built(reference.name)))
    return found


def built_version(found: list[ImageUse]) -> str:
    """The one tag every image built here is written with (a release builds and pushes that tag)."""
    tags = sorted({use.reference.tag for use in found if use.built})
    if len(tags) != 1:
        raise ValueError(f"the images built here are written with {len(tags)} tags {tags}; a release has one: "
                         "write the same version everywhere")
    return tags[0]


def unpinned(found: list[ImageUse]) -> list[ImageUse]:
    return [use for use in found if not use.pinned]


def inconsistent(found: list[ImageUse]) -> list[str]:
    """Images written with the same name and tag but different digests (one image, one digest)."""
    digests: dict[tuple[str, str], set[str | None]] = {}
    for use in found:
        digests.setdefault((use.reference.name, use.reference.tag), set()).add(use.reference.digest)
    return [f"{name}:{tag} is written with different digests: {sorted(d or 'none' for d in seen)}"
            for (name, tag), seen in sorted(digests.items()) if len(seen) > 1]


# -- reading digests from registries ------------------------------------------------------------

def resolve(reference: Reference, plain_http: frozenset[str] = frozenset()) -> str:
    """The digest the registry serves for ``reference``'s tag now (the multi-platform index when the
    image has one). ``plain_http``: registries spoken to over http (a local test registry)."""
    import oras.container  # only `pin-images` talks to registries; `validate` never does
    import oras.provider

    client = oras.provider.Registry(insecure=reference.registry in plain_http)
    # One deadline for every request, the token service's included (they share the session).
    client.session.request = functools.partial(client.session.request, timeout=REQUEST_TIMEOUT)
    # credentials of `docker login` for private registries; public images need none
    client.auth.load_configs(oras.container.Container(f"{reference.repository}:{reference.tag}",
                                                      registry=reference.registry))
    # oras' do_request retries failures for about two minutes; a person waiting on this command
    # is better served by one attempt and a message saying which registry did not answer.
    request = oras.provider.Registry.do_request.__wrapped__
    url = f"{client.prefix}://{reference.registry}/v2/{reference.repository}/manifests/{reference.tag}"
    try:
        response = request(client, url, "HEAD", headers={"Accept": MANIFEST_ACCEPT})
        digest = response.headers.get("Docker-Content-Digest") if response.status_code == 200 else None
        if response.status_code == 200 and not digest:  # some registries answer HEAD without the header
            response = request(client, url, "GET", headers={"Accept": MANIFEST_ACCEPT})
            digest = f"sha256:{hashlib.sha256(response.content).hexdigest()}" if response.status_code == 200 else None
    except Exception as exc:  # requests' connection errors, oras' "cannot authenticate"
        raise RegistryError(f"{reference}: could not reach {reference.registry}; pin-images needs network access to it "
                            f"({exc.__class__.__name__}: {exc})") from exc
    if response.status_code != 200:
        raise RegistryError(f"{reference}: {reference.registry} answered {response.status_code} for the tag "
                            f"(is the name right and the image public, or are you logged in?)")
    if not DIGEST.fullmatch(digest or ""):
        raise RegistryError(f"{reference}: {reference.registry} gave no sha256 digest ({digest!r})")
    return digest


# -- writing digests in place ---------------------------------------------------------------------

def set_scalar(text: str, dotted: str, value: str) -> str:
    """``text`` (block-style YAML) with the scalar at ``dotted`` replaced, comments and layout kept.
    The key must already be written (values files carry their digest keys, empty until pinned)."""
    wanted = dotted.split(".")
    stack: list[tuple[int, str]] = []
    lines = text.splitlines(keepends=True)
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z0-9_.-]+):(\s*)(.*?)(\s*#.*)?$", line.rstrip("\n"))
        if not match or line.lstrip().startswith(("#", "-")):
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
        if [key for _, key in stack] == wanted:
            comment = match.group(5) or ""
            lines[number] = f"{match.group(1)}{match.group(2)}: {value}{comment}\n"
            return "".join(lines)
    raise KeyError(f"{dotted} is not written in this file: add `{wanted[-1]}: \"\"` under {'.'.join(wanted[:-1]) or 'the top'} "
                   "so its digest can be recorded")


def write(use: ImageUse, digest: str) -> None:
    """Record ``digest`` for one use, in its file."""
    text = use.path.read_text()
    if use.digest_key:
        text = set_scalar(text, use.digest_key, f'"{digest}"')
    elif use.tag_key:
        text = set_scalar(text, use.tag_key, f'"{use.reference.tag}@{digest}"')
    else:
        old, new = str(use.reference), str(use.reference.with_digest(digest))
        pattern = re.compile(re.escape(old) + r"(?![\w.@:-])")
        if not pattern.search(text):
            if new in text:  # written once for every place of the file that names it
                return
            raise KeyError(f"{use.where}: {old} is not written in {use.path}")
        text = pattern.sub(new, text)
    use.path.write_text(text)


@dataclass(frozen=True)
class Change:
    use: ImageUse
    digest: str


def plan(found: list[ImageUse], built: dict[str, str], plain_http: frozenset[str] = frozenset(),
         progress=print) -> tuple[list[Change], list[str]]:
    """(what to record, what could not be pinned). Built images take the digests in ``built``; every
    other image's tag is resolved once, however many times it is written."""
    unknown = set(built) - set(BUILT)
    if unknown:
        raise ValueError(f"--built names {sorted(unknown)}; the images built here are {sorted(BUILT)}")
    for name, digest in built.items():
        if not DIGEST.fullmatch(digest):
            raise ValueError(f"--built {name}={digest}: give the digest the push printed, sha256: and 64 hex digits")
    changes, missing, resolved = [], [], {}
    for use in found:
        if use.built:
            digest = built.get(use.built)
            if digest is None:
                if not use.pinned:
                    missing.append(f"{use.where}: {use.reference} is built here; pass --built {use.built}=sha256:<the "
                                   "digest its push printed>")
                continue
        else:
            key = (use.reference.name, use.reference.tag)
            if key not in resolved:
                progress(f"resolving {use.reference.name}:{use.reference.tag} on {use.reference.registry}")
                resolved[key] = resolve(use.reference, plain_http)
            digest = resolved[key]
        if digest != use.reference.digest:
            changes.append(Change(use, digest))
    return changes, missing


def pin(changes: list[Change]) -> None:
    for change in changes:
        write(change.use, change.digest)
