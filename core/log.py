"""One logging format for every CLI, so a laptop terminal and a pod log read the same."""

from __future__ import annotations

import logging

from core import settings as settings_mod


def setup(level: str | None = None) -> None:
    logging.basicConfig(
        level=(level or settings_mod.raw("FP_LOG_LEVEL")).upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    # Feast and botocore are chatty at INFO; their warnings still show.
    for noisy in ("botocore", "urllib3", "s3transfer", "feast.infra.registry", "fsspec", "asyncio", "great_expectations"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
