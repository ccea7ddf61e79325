"""Shared plumbing: configuration, S3 access and logging, used by every pipeline step."""
