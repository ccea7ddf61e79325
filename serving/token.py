"""The inference API's bearer token: from FP_API_TOKEN (a Kubernetes Secret in production), else
generated once for the local stack and kept in $FP_LOCAL_DIR/api-token (mode 600)."""

from __future__ import annotations

import secrets
from pathlib import Path

from core.settings import Settings


def local_token_file(settings: Settings) -> Path:
    return settings.local_dir / "api-token"


def resolve(settings: Settings) -> str:
    if settings.api_token:
        return settings.api_token
    path = local_token_file(settings)
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(32))
            path.chmod(0o600)
        return path.read_text().strip()
    except OSError as exc:
        raise SystemExit(f"FP_API_TOKEN is not set and no local token could be kept at {path} ({exc.strerror}): "
                         "set FP_API_TOKEN (in Kubernetes, from the feature-platform-credentials Secret)") from None
