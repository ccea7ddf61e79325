"""Run a ValidatingAdmissionPolicy's CEL offline, as the API server would, on a pod.

No cluster is needed to know whether deploy/k8s/admission.yaml admits the worker pod Airflow
renders and denies the pods it must deny: its expressions are evaluated here with the CEL
runtime (cel-expr-python, with the optional-types extension Kubernetes enables), in Kubernetes'
order: match conditions, then variables, then each validation.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from cel_expr_python import cel
from cel_expr_python.ext.ext_optional import ExtOptional

AIRFLOW_TASKS = "system:serviceaccount:airflow:airflow-worker"

_ENV = cel.NewEnv(variables={"object": cel.Type.DYN, "oldObject": cel.Type.DYN, "request": cel.Type.DYN,
                             "params": cel.Type.DYN, "variables": cel.Type.DYN},
                  extensions=[ExtOptional()])


@dataclass(frozen=True)
class Decision:
    matched: bool
    denied: list[str]  # the messages of the validations that failed

    @property
    def admitted(self) -> bool:
        return not self.denied


def _eval(expression: str, data: dict):
    return _ENV.compile(expression).eval(data=data).plain_value()


def decide(policy: dict, pod: dict, username: str = AIRFLOW_TASKS, operation: str = "CREATE") -> Decision:
    """What the policy decides for ``pod`` (a manifest dict, camelCase) created by ``username``."""
    data = {"object": pod, "oldObject": None, "params": None, "variables": {},
            "request": {"operation": operation, "userInfo": {"username": username},
                        "namespace": pod.get("metadata", {}).get("namespace", "")}}
    spec = policy["spec"]
    if not all(_eval(c["expression"], data) is True for c in spec.get("matchConditions") or []):
        return Decision(False, [])
    for variable in spec.get("variables") or []:
        data["variables"] = {**data["variables"], variable["name"]: _eval(variable["expression"], data)}
    denied = [v.get("message") or v["expression"] for v in spec.get("validations") or []
              if _eval(v["expression"], data) is not True]
    return Decision(True, denied)


def violations(pod: dict) -> dict[str, dict]:
    """Variants of a worker pod that the policy must deny, each one mistake away from it."""

    def variant(change) -> dict:
        changed = copy.deepcopy(pod)
        change(changed["spec"], changed["spec"]["containers"][0])
        return changed

    return {
        "another image": variant(lambda s, c: c.__setitem__("image", "docker.io/library/python:3.11")),
        "the worker image by tag alone": variant(lambda s, c: c.__setitem__("image", c["image"].split("@")[0])),
        "the worker image with a malformed digest": variant(lambda s, c: c.__setitem__(
            "image", c["image"].split("@")[0] + "@sha256:" + "0" * 63)),
        "a hostPath volume": variant(lambda s, c: s.setdefault("volumes", []).append(
            {"name": "host", "hostPath": {"path": "/"}})),
        "another Secret as a volume": variant(lambda s, c: s.setdefault("volumes", []).append(
            {"name": "other", "secret": {"secretName": "airflow-metadata"}})),
        "another Secret in envFrom": variant(lambda s, c: c.setdefault("envFrom", []).append(
            {"secretRef": {"name": "airflow-metadata"}})),
        "another Secret in env": variant(lambda s, c: c.setdefault("env", []).append(
            {"name": "X", "valueFrom": {"secretKeyRef": {"name": "airflow-metadata", "key": "connection"}}})),
        "another service account": variant(lambda s, c: s.__setitem__("serviceAccountName", "default")),
        "the host network": variant(lambda s, c: s.__setitem__("hostNetwork", True)),
        "a privileged container": variant(lambda s, c: c.setdefault("securityContext", {}).__setitem__(
            "privileged", True)),
        "root": variant(lambda s, c: (c.setdefault("securityContext", {}).__setitem__("runAsNonRoot", False),
                                      s.setdefault("securityContext", {}).__setitem__("runAsNonRoot", False))),
        "an init container with another image": variant(lambda s, c: s.setdefault("initContainers", []).append(
            {"name": "init", "image": "docker.io/library/busybox:1"})),
    }
