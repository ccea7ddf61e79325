"""One factory decides where a heavy step runs: a KubernetesPodOperator or a local subprocess.

Both run the identical argv with the identical non-secret environment; only the transport
differs. In Kubernetes the secrets come from a Secret (``envFrom``), locally from the process
environment. ``worker_spec`` is what both are built from, so a test can render both and compare.
"""

from __future__ import annotations

import logging
from collections import deque
import os
import subprocess
import sys
from dataclasses import dataclass, field

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowSkipException

from core.settings import Settings

log = logging.getLogger(__name__)

OUTPUT_LINES_ON_FAILURE = 30
SECRET_NAME = "feature-platform-credentials"  # keys: deploy/k8s/secrets.example.yaml
CA_SECRET_NAME = "feature-platform-ca"  # ca.crt: verifies the Redis and registry TLS certificates
CA_MOUNT_PATH = "/etc/feature-platform/tls"


@dataclass(frozen=True)
class PodResources:
    """CPU and memory a worker pod requests and is limited to."""

    cpu_request: str = "500m"
    cpu_limit: str = "2"
    memory_request: str = "1Gi"
    memory_limit: str = "3Gi"


@dataclass(frozen=True)
class WorkerSpec:
    task_id: str
    argv: list[str]
    env: dict[str, str]
    resources: PodResources = field(default_factory=PodResources)


def worker_spec(task_id: str, argv: list[str], settings: Settings, resources: PodResources | None = None) -> WorkerSpec:
    return WorkerSpec(task_id, list(argv), settings.worker_env(), resources or PodResources())


class LocalCommandOperator(BaseOperator):
    """Run an argv as a subprocess, streaming its output into the task log; fail on non-zero exit,
    or end skipped on an exit status in ``skip_on_exit_code`` (as the KubernetesPodOperator does)."""

    template_fields = ("argv", "env")

    def __init__(self, *, argv: list[str], env: dict[str, str], skip_on_exit_code: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.argv = argv
        self.env = env
        self.skip_on_exit_code = skip_on_exit_code

    def execute(self, context):
        argv = list(self.argv)
        if argv[0] == "python":
            argv[0] = sys.executable  # the same interpreter (and virtual environment) as the worker
        self.log.info("running: %s", " ".join(argv))
        proc = subprocess.Popen(argv, env={**os.environ, **self.env}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        tail: deque[str] = deque(maxlen=OUTPUT_LINES_ON_FAILURE)
        for line in proc.stdout:
            self.log.info("%s", line.rstrip())
            tail.append(line.rstrip())
        code = proc.wait()
        if code != 0 and code == self.skip_on_exit_code:
            reason = next((line for line in reversed(tail) if line.startswith("error")), tail[-1] if tail else "")
            raise AirflowSkipException(f"skipped: `{' '.join(self.argv)}` exited with status {code}: {reason}")
        if code != 0:
            # The step's own last lines travel with the failure, whatever the task log's level.
            last = "\n".join(tail)
            raise RuntimeError(f"`{' '.join(self.argv)}` exited with status {code}; its last output lines:\n{last}")


def kubernetes_operator(spec: WorkerSpec, settings: Settings, **kwargs):
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    return KubernetesPodOperator(
        task_id=spec.task_id,
        name=spec.task_id.replace("_", "-"),
        namespace=settings.k8s_namespace,
        image=settings.worker_image,
        cmds=spec.argv[:1],
        arguments=spec.argv[1:],
        env_vars=[k8s.V1EnvVar(name=k, value=v) for k, v in spec.env.items()],
        env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=SECRET_NAME))],
        service_account_name=settings.k8s_service_account,
        container_resources=k8s.V1ResourceRequirements(
            requests={"cpu": spec.resources.cpu_request, "memory": spec.resources.memory_request},
            limits={"cpu": spec.resources.cpu_limit, "memory": spec.resources.memory_limit},
        ),
        security_context=k8s.V1PodSecurityContext(run_as_non_root=True, run_as_user=10001, run_as_group=10001,
                                                  fs_group=10001, seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault")),
        container_security_context=k8s.V1SecurityContext(
            allow_privilege_escalation=False, read_only_root_filesystem=True, run_as_non_root=True,
            capabilities=k8s.V1Capabilities(drop=["ALL"]),
        ),
        # A writable /tmp on a read-only root filesystem (Feast, pyarrow and botocore write temp files),
        # and the CA that Redis and registry TLS certificates are verified against.
        volumes=[k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit="1Gi")),
                 k8s.V1Volume(name="platform-ca", secret=k8s.V1SecretVolumeSource(secret_name=CA_SECRET_NAME))],
        volume_mounts=[k8s.V1VolumeMount(name="tmp", mount_path="/tmp"),
                       k8s.V1VolumeMount(name="platform-ca", mount_path=CA_MOUNT_PATH, read_only=True)],
        # name: selected by the worker NetworkPolicy; *-client: admitted by the Redis and registry DB policies.
        labels={"app.kubernetes.io/name": "feature-platform-worker", "app.kubernetes.io/part-of": "hr-feature-platform",
                "app.kubernetes.io/component": spec.task_id, "redis-client": "true",
                "feast-registry-postgresql-client": "true"},
        get_logs=True,
        on_finish_action="delete_pod",
        startup_timeout_seconds=600,
        **kwargs,
    )


def worker_task(task_id: str, argv: list[str], settings: Settings, resources: PodResources | None = None, **kwargs):
    """The operator for a heavy step, chosen by FP_RUNNER (``local`` or ``kubernetes``)."""
    spec = worker_spec(task_id, argv, settings, resources)
    if settings.runner == "kubernetes":
        return kubernetes_operator(spec, settings, **kwargs)
    return LocalCommandOperator(task_id=spec.task_id, argv=spec.argv, env=spec.env, **kwargs)
