"""`python -m features`: apply definitions, materialize to Redis, read online vectors.

    python -m features apply
    python -m features materialize-incremental 2026-11-24T02:00:00+00:00 --refresh-extraction 2026-10-31
    python -m features materialize 2026-01-01 2026-11-24
    python -m features online --employee-id 17 42
    python -m features breaking-changes [--model-features s3://.../model.json]

The same argv runs on a laptop and in the worker pod; configuration comes from the environment.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date, datetime, timezone

import redis
import sqlalchemy

from core import log as logsetup
from core import settings as settings_mod
from core.s3 import StorageError
from features import online
from features import store as fs
from features.resources import Resources


def _timestamp(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO date or timestamp, got {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m features", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("apply", help="register the entity, feature view and feature service")
    inc = sub.add_parser("materialize-incremental", help="load new feature rows into Redis, from the last watermark")
    inc.add_argument("end", type=_timestamp, nargs="?", default=None, help="end of the window (default: now, UTC)")
    inc.add_argument("--refresh-extraction", type=date.fromisoformat, default=None, metavar="YYYY-MM-DD",
                     help="also (re)load this extraction date's rows, e.g. one just re-published")
    win = sub.add_parser("materialize", help="load an explicit event-time window into Redis")
    win.add_argument("start", type=_timestamp)
    win.add_argument("end", type=_timestamp)
    chk = sub.add_parser("breaking-changes", help="exit 1 if the definitions would break the registry's consumers")
    chk.add_argument("--model-features", default=None,
                     help="JSON with the model's ordered feature_refs (file or s3:// URI); "
                          "default: the latest model's, if one was published")
    chk.add_argument("--without-model", action="store_true",
                     help="compare with the registry only (no S3 access: pull-request checks run without credentials)")
    onl = sub.add_parser("online", help="print online feature vectors in the model's (else the service's) order; "
                                        "exit 1 if any employee cannot be served")
    onl.add_argument("--employee-id", type=int, nargs="+", action="extend", required=True, metavar="N")
    onl.add_argument("--service", default=fs.FEATURE_SERVICE)
    args = parser.parse_args(argv)
    logsetup.setup()

    settings = settings_mod.load()
    try:
        return _run(args, settings)
    except redis.RedisError as exc:
        # Feast records a materialized interval only after every write, so the watermark is unchanged
        # and a re-run converges; rows already rewritten carry values at least as new as before.
        print(f"error: the online store (Redis at {settings.redis_location}) failed: {type(exc).__name__}: {exc}. "
              "Nothing was marked materialized; re-run once Redis answers.", file=sys.stderr)
        return 3
    except StorageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except fs.DefinitionsOutOfDate as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except sqlalchemy.exc.OperationalError as exc:
        print(f"error: the feature registry at {settings.registry_location} failed: {fs.registry_error(exc)}. "
              "Nothing was changed; re-run once it answers (check FP_REGISTRY_URL and its TLS settings).",
              file=sys.stderr)
        return 3


def _run(args, settings: settings_mod.Settings) -> int:
    resources = Resources.for_process(settings)
    if args.command == "breaking-changes":
        from features import compatibility
        from features.definitions import build

        model_location = None if args.without_model else args.model_features or compatibility.latest_model_location(settings)
        model = compatibility.load_model_features(settings, model_location) if model_location else None
        breaks = compatibility.compare(resources.store, list(build(settings)), model)
        changed = fs.changed_definitions(resources)
        for item in breaks:
            print(f"BREAKING {item}")
        print(f"{len(breaks)} breaking change(s); objects that would change on apply: {', '.join(changed) or 'none'}"
              + (f"; checked against the model's features at {model_location}" if model_location else ""))
        return 1 if breaks else 0
    if args.command == "apply":
        for name in fs.apply(resources):
            print(f"applied {name}")
    elif args.command == "materialize-incremental":
        print(fs.materialize(resources, args.end or datetime.now(timezone.utc),
                             refresh=args.refresh_extraction).summary())
    elif args.command == "materialize":
        print(fs.materialize(resources, args.end, start=args.start).summary())
    elif args.command == "online":
        try:
            refs = online.served_refs(resources, args.service)
            vectors = online.online_vectors(resources, args.employee_id, refs=refs, service=args.service)
        except online.ServingError as exc:
            print(f"error ({exc.reason}): {exc}", file=sys.stderr)
            return 1
        print(json.dumps({"feature_service": args.service, "features": online.names_of(refs),
                          "vectors": {str(k): v for k, v in vectors.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
