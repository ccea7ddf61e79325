"""Deployment artefacts (Dockerfiles, Kubernetes manifests) and their offline checks."""
