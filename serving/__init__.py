"""Online serving over HTTP: the read-only Feast feature server and the inference API in front of it.

    HR application -> inference API (serving.api) -> feature server (serving.feature_server) -> Redis

Both run with ``python -m serving``, identically on a laptop (``make serve``) and in a pod
(deploy/k8s/serving.yaml).
"""
