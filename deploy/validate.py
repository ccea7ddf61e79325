"""Offline checks of the Kubernetes deployment: no cluster needed.

* each values file, merged over its chart's defaults, validates against the chart's
  ``values.schema.json`` (chart data copied from the upstream charts into tests/data/helm-charts);
* every key we set exists in the chart's defaults, so a typo the schema tolerates (a misspelled
  top-level key, say) is caught;
* every manifest validates with kubernetes-validate in strict mode at TARGET_KUBERNETES_VERSION;
* policy: no literal secrets, pinned image tags, CPU and memory requests and limits, non-root and
  no privilege escalation, for the chart's values and for our own Deployments and StatefulSets alike;
* the online store (deploy/k8s/online-store.yaml): TLS only, for clients, replication and the
  Sentinels; maxmemory below the servers' memory limit with noeviction; a NetworkPolicy admitting only
  its labelled clients and its own pods;
* the registry database (deploy/k8s/registry-db.yaml): TLS on, a pg_hba.conf admitting network
  clients only over TLS with SCRAM passwords, a NetworkPolicy admitting only its labelled clients;
* serving: the feature server's Deployment runs serving.feature_server.FLAGS, the flags `make
  serve` runs locally, and every Deployment has a PodDisruptionBudget and an autoscaler;
* the Ray cluster (deploy/ray, FP_COMPUTE_ENGINE=ray): no RayCluster schema is available offline,
  so each of its pod templates validates strictly as a Kubernetes PodTemplate and meets the pod
  policy above, its Ray version is the one the worker image installs, its pods run the worker
  image, and the worker pods may reach its client port;
* images (deploy/images.py): every reference parses, none is `latest`, one image has one digest
  wherever it is written; with ``release=True`` (`python -m deploy validate --release`, run before
  installing) every image is pinned by digest.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

from deploy import images

ROOT = Path(__file__).resolve().parent.parent
CHART_DATA = ROOT / "tests" / "data" / "helm-charts"
VALUES_DIR = ROOT / "helm-values"
MANIFESTS_DIR = ROOT / "deploy" / "k8s"
RAY_DIR = ROOT / "deploy" / "ray"
WORKER_REQUIREMENTS = ROOT / "requirements-worker.txt"
TARGET_KUBERNETES_VERSION = "1.33.0"  # manifests here and the pod specs the DAGs render

# values file(s) -> chart; overlays are merged in order over the base.
RELEASES = {
    "airflow": ("airflow", ["airflow.yaml"]),
}

# Maps whose keys are the user's to choose (the chart's default is an empty or example map).
FREE_FORM = {"config", "env", "extraEnv", "labels", "podAnnotations", "annotations", "resources", "requests",
             "limits", "nodeSelector", "podLabels", "securityContexts", "podSecurityContext", "securityContext",
             "containerSecurityContext", "seccompProfile", "capabilities", "pod", "containers"}

SECRET_KEY = re.compile(r"(password|passwd|secret|token|apikey|api_key|secretkey|fernetkey)$", re.IGNORECASE)
CREDENTIAL_URL = re.compile(r"://[^/\s:@]+:[^/\s@]+@")

# Where each release's containers declare resources (dotted paths into the merged values).
RESOURCE_PATHS = {
    "airflow": ["workers", "scheduler", "apiServer", "triggerer", "dagProcessor", "migrateDatabaseJob", "statsd",
                "scheduler.logGroomerSidecar", "triggerer.logGroomerSidecar", "dagProcessor.logGroomerSidecar"],
}
# The registry database (deploy/k8s/registry-db.yaml): its StatefulSet and Service, the name in
# FP_REGISTRY_URL and in its certificate.
REGISTRY_DB = "feast-registry-postgresql"
REGISTRY_DB_CLIENT_LABEL = "feast-registry-postgresql-client"
# The online store (deploy/k8s/online-store.yaml): its StatefulSet, the label its clients carry, and
# where its containers read their configuration.
ONLINE_STORE = "redis-node"
ONLINE_STORE_CLIENT_LABEL = "redis-client"
ONLINE_STORE_CONFIG = {"valkey": "/etc/valkey/config/valkey.conf", "sentinel": "/etc/valkey/config/sentinel.conf"}


@dataclass(frozen=True)
class Problem:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def deep_merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def release_values(release: str, overrides: list[dict] | None = None) -> tuple[dict, list[dict]]:
    """(the chart's defaults merged with our files, our files' contents) for one release."""
    chart, files = RELEASES[release]
    ours = overrides if overrides is not None else [load_yaml(VALUES_DIR / f) for f in files]
    merged = load_yaml(CHART_DATA / chart / "values.yaml")
    for layer in ours:
        merged = deep_merge(merged, layer)
    return merged, ours


def _get(values: dict, dotted: str):
    node = values
    for part in [p for p in dotted.split(".") if p]:
        node = node.get(part) if isinstance(node, dict) else None
    return node


def schema_problems(release: str, merged: dict) -> list[Problem]:
    chart, _ = RELEASES[release]
    schema_path = CHART_DATA / chart / "values.schema.json"
    if not schema_path.exists():
        return []
    schema = json.loads(schema_path.read_text())
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)(schema)
    return [Problem(f"{release}: {'.'.join(str(p) for p in e.absolute_path) or '(top)'}", e.message)
            for e in sorted(validator.iter_errors(merged), key=lambda e: list(e.absolute_path))]


def unknown_keys(ours: dict, defaults: dict, path: str = "") -> list[str]:
    found = []
    for key, value in ours.items():
        here = f"{path}.{key}" if path else key
        if key not in defaults:
            found.append(here)
            continue
        default = defaults[key]
        if key in FREE_FORM or not isinstance(value, dict) or not isinstance(default, dict) or not default:
            continue
        found += unknown_keys(value, default, here)
    return found


def _walk(node, path=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}" if path else str(key))
            yield path, key, value
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _walk(item, f"{path}[{index}]")


def literal_secrets(document, where: str) -> list[Problem]:
    problems = []
    for path, key, value in _walk(document):
        if not isinstance(value, str) or not value.strip():
            continue
        # existingSecret, certificatesSecret: the name of a Secret, not its value.
        reference = str(key).lower().startswith("existing") or str(key) == "certificatesSecret"
        if SECRET_KEY.search(str(key)) and not reference and not value.startswith("${"):
            problems.append(Problem(f"{where}: {path}.{key}".replace(": .", ": "), "literal secret; use a Secret reference"))
        if CREDENTIAL_URL.search(value) and "${" not in value and "<password>" not in value:
            problems.append(Problem(f"{where}: {path}.{key}".replace(": .", ": "), "credentials in a URL"))
    for env in _env_entries(document):
        name, value = str(env.get("name", "")), env.get("value")
        if SECRET_KEY.search(name) or name.endswith(("_PASSWORD", "_SECRET_ACCESS_KEY", "_TOKEN")):
            if isinstance(value, str) and value.strip():
                problems.append(Problem(f"{where}: env {name}", "literal secret in an env var; use valueFrom.secretKeyRef"))
    return problems


def _env_entries(document) -> list[dict]:
    out = []
    for _, key, value in _walk(document):
        if key in {"env", "extraEnvs", "extraEnvVars"} and isinstance(value, list):
            out += [e for e in value if isinstance(e, dict)]
    return out


# Kubernetes quantities (K, M, G, T decimal; Ki, Mi, Gi, Ti binary) and Redis sizes (k, m, g
# decimal; kb, mb, gb binary: Redis's "1mb" is 1024*1024 bytes).
MEMORY_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
                "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4,
                "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}


def _memory_bytes(text: str) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)", str(text).strip())
    if not match or match.group(2).lower() not in MEMORY_UNITS:
        raise ValueError(f"cannot read memory quantity {text!r}")
    return int(float(match.group(1)) * MEMORY_UNITS[match.group(2).lower()])


def policy_problems(release: str, merged: dict) -> list[Problem]:
    problems = []
    for path in RESOURCE_PATHS.get(release, []):
        resources = _get(merged, f"{path}.resources" if path else "resources") or {}
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if not (resources.get(kind) or {}).get(resource):
                    problems.append(Problem(f"{release}: {path or '(top)'}.resources.{kind}.{resource}", "missing"))
    if release == "airflow":
        tag = str(merged.get("defaultAirflowTag") or "")
        if not tag or tag == "latest":
            problems.append(Problem("airflow: defaultAirflowTag", "image tag must be pinned"))
        containers = (merged.get("securityContexts") or {}).get("containers") or {}
        if containers.get("allowPrivilegeEscalation") is not False or "ALL" not in (containers.get("capabilities") or {}).get("drop", []):
            problems.append(Problem("airflow: securityContexts.containers", "must forbid privilege escalation and drop ALL"))
        if not ((merged.get("securityContexts") or {}).get("pod") or {}).get("runAsNonRoot"):
            problems.append(Problem("airflow: securityContexts.pod.runAsNonRoot", "must be true"))
        if (merged.get("createUserJob") or {}).get("enabled"):
            problems.append(Problem("airflow: createUserJob.enabled", "no default admin user in production"))
    return problems


def check_release(release: str, overrides: list[dict] | None = None) -> list[Problem]:
    chart, files = RELEASES[release]
    merged, ours = release_values(release, overrides)
    defaults = load_yaml(CHART_DATA / chart / "values.yaml")
    problems = schema_problems(release, merged)
    for name, layer in zip(files, ours):
        problems += [Problem(f"{release}: {k}", f"unknown key (not in {chart}'s values.yaml): a typo?")
                     for k in unknown_keys(layer, defaults)]
        problems += literal_secrets(layer, f"{release} ({name})")
    return problems + policy_problems(release, merged)


def manifests(folder: Path = MANIFESTS_DIR) -> list[tuple[str, dict]]:
    out = []
    for path in sorted(folder.glob("*.yaml")):
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc:
                out.append((f"{path.name}#{index}", doc))
    return out


def check_manifest(name: str, doc: dict) -> list[Problem]:
    problems = []
    try:
        kubernetes_validate.validate(doc, TARGET_KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        problems.append(Problem(name, f"invalid at {'.'.join(str(p) for p in exc.path)}: {exc.message}"))
    except kubernetes_validate.SchemaNotFoundError as exc:
        problems.append(Problem(name, f"unknown kind/apiVersion: {exc}"))
    if doc.get("kind") == "Secret":
        for key, value in {**(doc.get("stringData") or {}), **(doc.get("data") or {})}.items():
            if isinstance(value, str) and value and not value.startswith("${"):
                problems.append(Problem(f"{name}: {key}", "literal secret value in a manifest"))
    else:
        problems += literal_secrets(doc, name)
    return problems


def _pinned(image: str) -> bool:
    return "@sha256:" in image or (":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"))


def workload_problems(name: str, doc: dict) -> list[Problem]:
    """Our own Deployments and StatefulSets meet the same bar as the charts' values."""
    if doc.get("kind") not in {"Deployment", "StatefulSet"}:
        return []
    return pod_problems(name, doc["spec"]["template"]["spec"])


def pod_problems(name: str, pod: dict) -> list[Problem]:
    """Non-root, pinned images, CPU and memory requests and limits, a locked-down container."""
    problems = []
    if not (pod.get("securityContext") or {}).get("runAsNonRoot"):
        problems.append(Problem(f"{name}: securityContext.runAsNonRoot", "must be true"))
    for container in pod.get("containers", []):
        where = f"{name}: {container.get('name')}"
        if not _pinned(str(container.get("image", ""))):
            problems.append(Problem(f"{where}.image", f"image must be pinned (got {container.get('image')!r})"))
        resources = container.get("resources") or {}
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if not (resources.get(kind) or {}).get(resource):
                    problems.append(Problem(f"{where}.resources.{kind}.{resource}", "missing"))
        context = container.get("securityContext") or {}
        if context.get("allowPrivilegeEscalation") is not False or not context.get("readOnlyRootFilesystem") \
                or "ALL" not in (context.get("capabilities") or {}).get("drop", []):
            problems.append(Problem(f"{where}.securityContext",
                                    "no privilege escalation, read-only root filesystem, drop ALL capabilities"))
    return problems


def serving_problems(documents: list[tuple[str, dict]]) -> list[Problem]:
    from serving.feature_server import FLAGS

    problems = []
    by_kind: dict[str, dict[str, dict]] = {}
    for _, doc in documents:
        by_kind.setdefault(doc.get("kind"), {})[doc["metadata"]["name"]] = doc
    deployments = by_kind.get("Deployment", {})
    server = deployments.get("feature-server")
    if server is None:
        return [Problem("deploy/k8s", "no feature-server Deployment")]
    args = server["spec"]["template"]["spec"]["containers"][0].get("args", [])
    expected = FLAGS.argv()
    if args[:2] != ["serving", "feature-server"] or args[-len(expected):] != expected:
        problems.append(Problem("feature-server Deployment: args",
                                f"must run `serving feature-server ... {' '.join(expected)}` (serving.feature_server.FLAGS), "
                                f"got {' '.join(args)}"))
    for deployment in deployments:
        for kind in ("PodDisruptionBudget", "HorizontalPodAutoscaler"):
            if deployment not in by_kind.get(kind, {}):
                problems.append(Problem(f"Deployment {deployment}", f"has no {kind}"))
    return problems


def network_problems(documents: list[tuple[str, dict]]) -> list[Problem]:
    """Default deny in the platform's namespace (what the online store and the registry database admit:
    online_store_problems, registry_database_problems)."""
    problems = []
    deny = [d for _, d in documents if d.get("kind") == "NetworkPolicy" and d["spec"].get("podSelector") == {}
            and set(d["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
            and not d["spec"].get("ingress") and not d["spec"].get("egress")]
    if not deny:
        problems.append(Problem("deploy/k8s", "no default-deny NetworkPolicy (podSelector {}, Ingress and Egress)"))
    return problems


def _egress_rules(documents):
    for name, doc in documents:
        if doc.get("kind") == "NetworkPolicy":
            for index, rule in enumerate(doc["spec"].get("egress") or []):
                yield f"{name} ({doc['metadata']['name']}) egress[{index}]", rule


def egress_problems(documents: list[tuple[str, dict]]) -> list[Problem]:
    """Every egress rule names where it goes; the open internet never includes the metadata service
    or in-cluster ranges."""
    problems = []
    for where, rule in _egress_rules(documents):
        if not rule.get("to"):
            problems.append(Problem(where, "allows any address: name pods, namespaces or an ipBlock in `to`"))
        for peer in rule.get("to") or []:
            block = peer.get("ipBlock")
            if block and block.get("cidr") == "0.0.0.0/0" and not {"169.254.0.0/16", "10.0.0.0/8"} <= set(
                    block.get("except") or []):
                problems.append(Problem(where, "0.0.0.0/0 must except 169.254.0.0/16 (cloud metadata) and the "
                                               "private ranges of the cluster"))
    return problems


def _mounts_ca(pod_spec: dict) -> bool:
    from orchestration.worker import CA_MOUNT_PATH, CA_SECRET_NAME

    volumes = {v["name"] for v in pod_spec.get("volumes") or [] if (v.get("secret") or {}).get("secretName")
               == CA_SECRET_NAME}
    return any(m["name"] in volumes and m["mountPath"] == CA_MOUNT_PATH
               for c in pod_spec.get("containers", []) for m in c.get("volumeMounts") or [])


def tls_problems(documents: list[tuple[str, dict]]) -> list[Problem]:
    """Every pod holding the online store's or the registry's URL has the CA to verify them (that
    they serve TLS: online_store_problems, registry_database_problems)."""
    from orchestration.worker import CA_MOUNT_PATH, CA_SECRET_NAME, SECRET_NAME

    problems = []
    for name, doc in documents:
        if doc.get("kind") != "Deployment":
            continue
        spec = doc["spec"]["template"]["spec"]
        reads_stores = any((e.get("valueFrom") or {}).get("secretKeyRef", {}).get("key") in {"FP_REDIS_URL",
                                                                                              "FP_REGISTRY_URL"}
                           for c in spec["containers"] for e in c.get("env") or [])
        if reads_stores and not _mounts_ca(spec):
            problems.append(Problem(f"{name} ({doc['metadata']['name']})",
                                    f"connects to Redis or the registry: mount Secret {CA_SECRET_NAME} at {CA_MOUNT_PATH}"))
    airflow = release_values("airflow")[0]
    if SECRET_NAME in str(airflow.get("extraEnvFrom", "")) and not _mounts_ca(
            {"volumes": airflow.get("volumes"), "containers": [{"volumeMounts": airflow.get("volumeMounts")}]}):
        problems.append(Problem("airflow: volumes", f"Airflow's pods get {SECRET_NAME}: mount Secret {CA_SECRET_NAME} "
                                                    f"at {CA_MOUNT_PATH}"))
    return problems


def server_options(args: list[str]) -> dict[str, str]:
    """PostgreSQL's ``-c name=value`` options from a container's args."""
    options, pending = {}, False
    for arg in args:
        if pending or arg.startswith("-c") and arg != "-c":
            name, _, value = (arg if pending else arg[2:]).partition("=")
            options[name.strip()] = value.strip()
        pending = arg == "-c"
    return options


def mounted_config(pod: dict, container: dict, path: str, documents: list[tuple[str, dict]]) -> str | None:
    """The text of the ConfigMap entry a container sees at ``path``, or None when no ConfigMap is mounted there."""
    for mount in container.get("volumeMounts") or []:
        folder = mount["mountPath"].rstrip("/") + "/"
        if not path.startswith(folder):
            continue
        volume = next((v for v in pod.get("volumes") or [] if v["name"] == mount["name"]), {})
        source = volume.get("configMap") or {}
        relative = path[len(folder):]
        key = next((i["key"] for i in source.get("items") or [] if i["path"] == relative), relative)
        config = next((d for _, d in documents if d.get("kind") == "ConfigMap"
                       and d["metadata"]["name"] == source.get("name")), None)
        return None if config is None else (config.get("data") or {}).get(key)
    return None


HBA_METHODS = {"trust", "reject", "scram-sha-256", "md5", "password", "gss", "sspi", "ident", "peer", "ldap", "radius",
               "cert", "pam", "bsd", "oauth"}


def hba_problems(text: str, where: str) -> list[Problem]:
    """Network clients only over TLS with a SCRAM password; no trust anywhere (reject lines are fine)."""
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        kind = fields[0]
        method = next((f for f in fields[3:] if f in HBA_METHODS), "(none)")  # after type, database, user[, address]
        if method == "reject":
            continue
        if kind == "local":
            if method not in {"peer", "scram-sha-256"}:
                problems.append(Problem(f"{where}:{number}", f"local connections must use peer or scram-sha-256, not {method}"))
        elif kind != "hostssl":
            problems.append(Problem(f"{where}:{number}", f"{kind} admits connections without TLS: use hostssl"))
        elif method != "scram-sha-256":
            problems.append(Problem(f"{where}:{number}", f"network clients must authenticate with scram-sha-256, not {method}"))
    return problems


def statefulset(documents: list[tuple[str, dict]], name: str) -> dict | None:
    """The StatefulSet called ``name`` among ``documents`` (ONLINE_STORE, REGISTRY_DB)."""
    return next((d for _, d in documents if d.get("kind") == "StatefulSet" and d["metadata"]["name"] == name), None)


def _ingress_reaching(documents: list[tuple[str, dict]], workload: dict, ports: set) -> list[tuple[str, dict]] | None:
    """(where, rule) for every ingress rule of the NetworkPolicies selecting ``workload``'s pods that
    reaches one of ``ports`` (a rule naming no port reaches them all); None when no policy selects them."""
    labels = workload["spec"]["template"]["metadata"].get("labels") or {}
    policies = [d for _, d in documents if d.get("kind") == "NetworkPolicy"
                and (d["spec"].get("podSelector") or {}).get("matchLabels")
                and (d["spec"]["podSelector"]["matchLabels"]).items() <= labels.items()
                and "Ingress" in d["spec"].get("policyTypes", [])]
    if not policies:
        return None
    return [(f"NetworkPolicy {policy['metadata']['name']}: ingress[{index}]", rule)
            for policy in policies for index, rule in enumerate(policy["spec"].get("ingress") or [])
            if not rule.get("ports") or {p.get("port") for p in rule["ports"]} & ports]


def _config(text: str) -> dict[str, str]:
    """A valkey.conf's directives (lower-cased) and their values, the last one winning."""
    found = {}
    for line in text.splitlines():
        fields = line.split(None, 1)
        if fields and not fields[0].startswith("#"):
            found[fields[0].lower()] = fields[1].strip() if len(fields) > 1 else ""
    return found


def online_store_problems(documents: list[tuple[str, dict]]) -> list[Problem]:
    """The online store (deploy/k8s/online-store.yaml): servers and Sentinels serve and replicate over
    TLS only; the servers' maxmemory stays below their memory limit and they never evict Feast's keys
    (noeviction); a NetworkPolicy admits to them only the platform's labelled clients and each other."""
    store = statefulset(documents, ONLINE_STORE)
    if store is None:
        return [Problem("deploy/k8s", f"no StatefulSet {ONLINE_STORE} (the online store)")]
    where = f"StatefulSet {ONLINE_STORE}"
    pod = store["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    problems = []
    for name, path in ONLINE_STORE_CONFIG.items():
        text = mounted_config(pod, containers.get(name, {}), path, documents)
        if text is None:
            problems.append(Problem(f"{where}: {name}", f"no configuration mounted from a ConfigMap at {path}"))
            continue
        config = _config(text)
        if config.get("port") != "0":
            problems.append(Problem(f"{where}: {path}", "`port 0`: no plain-text port (clients verify the certificate)"))
        for directive in ("tls-cert-file", "tls-key-file", "tls-ca-cert-file"):
            if not config.get(directive):
                problems.append(Problem(f"{where}: {path}", f"{directive} must be set"))
        if config.get("tls-replication") != "yes":
            problems.append(Problem(f"{where}: {path}", "`tls-replication yes`: replication and Sentinel links over TLS"))
        if name != "valkey":
            continue
        limit = ((containers[name].get("resources") or {}).get("limits") or {}).get("memory")
        if not config.get("maxmemory") or not limit:
            problems.append(Problem(f"{where}: {path}", "set maxmemory and the container's memory limit"))
        elif _memory_bytes(config["maxmemory"]) >= _memory_bytes(limit):
            problems.append(Problem(f"{where}: {path}", f"maxmemory {config['maxmemory']} must stay below the "
                                                        f"container's memory limit {limit}"))
        if config.get("maxmemory-policy") != "noeviction":
            problems.append(Problem(f"{where}: {path}", "maxmemory-policy noeviction: evicted features would be "
                                                        "served as missing"))
    own_labels = store["spec"]["selector"]["matchLabels"]
    rules = _ingress_reaching(documents, store, {6379, 26379, "valkey", "sentinel"})
    if rules is None:
        problems.append(Problem(where, "no NetworkPolicy selects its pods for Ingress"))
    for rule_where, rule in rules or []:
        for peer in rule.get("from") or [{}]:
            labels = (peer.get("podSelector") or {}).get("matchLabels") or {}
            client = labels.get(ONLINE_STORE_CLIENT_LABEL) == "true"
            itself = "namespaceSelector" not in peer and labels.items() >= own_labels.items()
            if not (client or itself):
                problems.append(Problem(rule_where, f"admit only pods labelled {ONLINE_STORE_CLIENT_LABEL}=true "
                                                    "and the store's own pods"))
    return problems


def registry_database_problems(documents: list[tuple[str, dict]]) -> list[Problem]:
    """The registry database (deploy/k8s/registry-db.yaml) serves TLS only, its pg_hba.conf admits
    network clients only over TLS with a SCRAM password, and a NetworkPolicy admits only its clients."""
    database = statefulset(documents, REGISTRY_DB)
    if database is None:
        return [Problem("deploy/k8s", f"no StatefulSet {REGISTRY_DB} (the registry database)")]
    where = f"StatefulSet {REGISTRY_DB}"
    pod = database["spec"]["template"]["spec"]
    container = pod["containers"][0]
    options = server_options(container.get("args") or [])
    problems = []
    if options.get("ssl") != "on":
        problems.append(Problem(f"{where}: args", "must run with -c ssl=on (clients verify the certificate)"))
    hba = mounted_config(pod, container, options.get("hba_file", ""), documents)
    if hba is None:
        problems.append(Problem(f"{where}: args", "-c hba_file= must name a pg_hba.conf mounted from a ConfigMap"))
    else:
        problems += hba_problems(hba, f"{where}: pg_hba.conf")
    rules = _ingress_reaching(documents, database, {5432, "postgresql"})
    if rules is None:
        problems.append(Problem(where, "no NetworkPolicy selects its pods for Ingress"))
    for rule_where, rule in rules or []:
        peers = rule.get("from") or [{}]
        if any((peer.get("podSelector") or {}).get("matchLabels", {}).get(REGISTRY_DB_CLIENT_LABEL) != "true"
               for peer in peers):
            problems.append(Problem(rule_where, f"admit only pods labelled {REGISTRY_DB_CLIENT_LABEL}=true"))
    return problems


def admission_problems(documents: list[tuple[str, dict]]) -> list[Problem]:
    """Pods created by Airflow's tasks are held to the worker's image, service account and Secrets."""
    from core import settings as settings_mod
    from orchestration.worker import CA_SECRET_NAME, SECRET_NAME

    defaults = {s.env: s.default for s in settings_mod.SETTINGS}
    image_repository = defaults["FP_WORKER_IMAGE"].rsplit(":", 1)[0]
    policies = [d for _, d in documents if d.get("kind") == "ValidatingAdmissionPolicy"]
    bindings = [d for _, d in documents if d.get("kind") == "ValidatingAdmissionPolicyBinding"]
    needed = {"the worker image": image_repository, "the worker service account": defaults["FP_K8S_SERVICE_ACCOUNT"],
              "the worker Secret": SECRET_NAME, "the CA Secret": CA_SECRET_NAME}
    for policy in policies:
        conditions = " ".join(c["expression"] for c in policy["spec"].get("matchConditions") or [])
        text = " ".join(v["expression"] for v in policy["spec"].get("validations") or [])
        bound = any(b["spec"]["policyName"] == policy["metadata"]["name"] and "Deny" in b["spec"]["validationActions"]
                    for b in bindings)
        if "system:serviceaccount:airflow:airflow-worker" in conditions and bound:
            missing = [what for what, value in needed.items() if value not in text]
            where = f"ValidatingAdmissionPolicy {policy['metadata']['name']}"
            return [Problem(where, f"does not restrict pods to {w}") for w in missing] + _decisions(where, policy)
    return [Problem("deploy/k8s", "no ValidatingAdmissionPolicy, bound with Deny, on the pods Airflow's tasks create")]


def worker_pod(image: str | None = None) -> dict:
    """The worker pod exactly as Airflow's KubernetesPodOperator renders it (the nightly materialization),
    running ``image`` in place of the configured worker image when given."""
    from dataclasses import replace

    from kubernetes.client import ApiClient

    from core import settings as settings_mod
    from orchestration.worker import kubernetes_operator, worker_spec

    settings = replace(settings_mod.load(), runner="kubernetes")
    if image:
        settings = replace(settings, worker_image=image)
    spec = worker_spec("materialize_incremental", ["python", "-m", "features", "materialize-incremental"], settings)
    with contextlib.redirect_stdout(io.StringIO()):  # "Building pod ..." is not a finding of the check
        pod = kubernetes_operator(spec, settings).build_pod_request_obj(dry_run=True)
    return ApiClient().sanitize_for_serialization(pod)


def deployed_worker_image() -> images.Reference:
    """The worker image Airflow's pods are configured with (FP_WORKER_IMAGE in helm-values/airflow.yaml)
    as it runs once released: pinned by digest (a stand-in digest until `pin-images` records the real one)."""
    use = next(u for u in images.uses() if u.where.endswith(f"env {images.WORKER_IMAGE_SETTING}"))
    return use.reference if use.pinned else use.reference.with_digest("sha256:" + "0" * 64)


def _decisions(where: str, policy: dict) -> list[Problem]:
    """The policy's CEL, run offline: the rendered worker pod is admitted, each one-mistake variant denied."""
    from deploy import admission

    pod = worker_pod(str(deployed_worker_image()))
    problems = []
    decision = admission.decide(policy, pod)
    if not decision.matched:
        problems.append(Problem(where, f"does not apply to pods created by {admission.AIRFLOW_TASKS}"))
    elif decision.denied:
        problems.append(Problem(where, f"denies the worker pod Airflow renders: {'; '.join(decision.denied)}"))
    for mistake, variant in admission.violations(pod).items():
        if admission.decide(policy, variant).admitted:
            problems.append(Problem(where, f"admits a worker pod with {mistake}"))
    if admission.decide(policy, pod, username="system:serviceaccount:feature-platform:default").matched:
        problems.append(Problem(where, "applies to pods the platform's own Deployments create"))
    return problems


def _pinned_ray_version() -> str | None:
    found = re.search(r"^ray==([^\s;]+)", WORKER_REQUIREMENTS.read_text(), re.MULTILINE)
    return found.group(1) if found else None


def _ray_pod_templates(doc: dict) -> list[tuple[str, dict]]:
    spec = doc.get("spec") or {}
    templates = [("headGroupSpec", (spec.get("headGroupSpec") or {}).get("template"))]
    templates += [(f"workerGroupSpecs[{g.get('groupName', i)}]", g.get("template"))
                  for i, g in enumerate(spec.get("workerGroupSpecs") or [])]
    return templates


def ray_problems(documents: list[tuple[str, dict]]) -> list[Problem]:
    """deploy/ray: the RayCluster FP_RAY_ADDRESS names, and what lets the worker pods reach it."""
    from core import settings as settings_mod
    from orchestration.worker import CA_MOUNT_PATH

    problems = []
    clusters = [(n, d) for n, d in documents if d.get("kind") == "RayCluster"]
    if not clusters:
        return [Problem("deploy/ray", "no RayCluster")]
    worker_image = images.Reference.parse(settings_mod.raw("FP_WORKER_IMAGE"))
    for name, doc in clusters:
        if doc.get("apiVersion") != "ray.io/v1":
            problems.append(Problem(f"{name}: apiVersion", f"must be ray.io/v1 (KubeRay 1.x), got {doc.get('apiVersion')!r}"))
        pinned = _pinned_ray_version()
        if str((doc.get("spec") or {}).get("rayVersion")) != pinned:
            problems.append(Problem(f"{name}: spec.rayVersion", f"must be {pinned}, the ray the worker image installs "
                                    f"(requirements-worker.txt), got {(doc.get('spec') or {}).get('rayVersion')!r}"))
        for group in (doc.get("spec") or {}).get("workerGroupSpecs") or []:
            low, mid, high = (group.get(k, 0) for k in ("minReplicas", "replicas", "maxReplicas"))
            if not (isinstance(low, int) and isinstance(mid, int) and isinstance(high, int) and 0 <= low <= mid <= high):
                problems.append(Problem(f"{name}: workerGroupSpecs[{group.get('groupName')}]",
                                        "needs minReplicas <= replicas <= maxReplicas"))
        for where, template in _ray_pod_templates(doc):
            where = f"{name}: {where}"
            if not template:
                problems.append(Problem(where, "has no pod template"))
                continue
            problems += check_manifest(f"{where}.template", {"apiVersion": "v1", "kind": "PodTemplate",
                                                             "metadata": {"name": "ray"}, "template": template})
            pod = template.get("spec") or {}
            problems += pod_problems(where, pod)
            for container in pod.get("containers", []):
                try:
                    image = images.Reference.parse(container.get("image", ""))
                except ValueError:
                    image = None
                if image is None or (image.name, image.tag) != (worker_image.name, worker_image.tag):
                    problems.append(Problem(f"{where}: {container.get('name')}.image",
                                            f"must be the worker image {worker_image} (the driver's Ray, Python and code), "
                                            f"got {container.get('image')!r}"))
            if where.endswith("]") and not any(m.get("mountPath") == CA_MOUNT_PATH for c in pod.get("containers", [])
                                               for m in c.get("volumeMounts") or []):
                problems.append(Problem(where, f"must mount the CA at {CA_MOUNT_PATH}: Ray's tasks write to Redis over TLS"))
    reaches_client = any(
        doc.get("kind") == "NetworkPolicy"
        and (doc["spec"].get("podSelector") or {}).get("matchLabels", {}).get("app.kubernetes.io/name") == "feature-platform-worker"
        and any(any(p.get("port") == 10001 for p in rule.get("ports") or []) for rule in doc["spec"].get("egress") or [])
        for _, doc in documents)
    if not reaches_client:
        problems.append(Problem("deploy/ray", "no NetworkPolicy lets the worker pods reach the Ray head's client port 10001"))
    for name, doc in documents:
        if doc.get("kind") != "RayCluster":
            problems += check_manifest(name, doc)
    return problems


def image_problems(release: bool = False, root: Path = ROOT) -> list[Problem]:
    """Image references (deploy/images.py); with ``release``, every image pinned by digest."""
    try:
        found = images.uses(root)
    except ValueError as exc:
        return [Problem("images", str(exc))]
    problems = [Problem(use.where, "`latest` moves: name a version") for use in found if use.reference.tag == "latest"]
    problems += [Problem("images", message) for message in images.inconsistent(found)]
    try:
        images.built_version(found)
    except ValueError as exc:
        problems.append(Problem("images", str(exc)))
    if release:
        for use in images.unpinned(found):
            how = (f"`python -m deploy pin-images --built {use.built}=sha256:<the digest its push printed>`"
                   if use.built else "`python -m deploy pin-images` (reads the digest from its registry)")
            problems.append(Problem(use.where, f"{use.reference} is pulled by tag alone: pin it with {how}"))
    return problems


def check_all(release: bool = False) -> list[Problem]:
    problems = image_problems(release)
    for name in RELEASES:
        problems += check_release(name)
    documents = manifests()
    for name, doc in documents:
        problems += check_manifest(name, doc) + workload_problems(name, doc)
    ray_documents = manifests(RAY_DIR)
    return (problems + serving_problems(documents) + network_problems(documents) + egress_problems(documents + ray_documents)
            + tls_problems(documents) + online_store_problems(documents) + registry_database_problems(documents)
            + admission_problems(documents)
            + ray_problems(ray_documents))
