"""`python -m training train|predict|skew-check`

    python -m training train                      # labels -> point-in-time set -> model -> S3 (+ gate)
    python -m training predict --employee-id 17   # online features -> probability, by the stored order
    python -m training skew-check                 # online vs offline point-in-time, exactly, values and event times

Exit status: 0 ok; 1 the model failed its quality gate, the history mixes feature code (see
--recompute-history), prediction was refused (missing, stale or mismatched features, or a model
trained on other feature code than the served) or the skew check found differences; 2 no data or
no model yet; 3 S3 or Redis failed.
"""

from __future__ import annotations

import argparse
import json
import sys

import redis
import sqlalchemy

from core import log as logsetup
from core import settings as settings_mod
from core.lease import Busy, LeaseLost
from core.s3 import StorageError
from etl.schema import ContractError
from expectations.gate import ValidationFailed
from features import store as fs
from features.resources import Resources
from features.online import ServingError
from training import dataset, model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train, evaluate and store a model; promote it if it passes the gate")
    t.add_argument("--horizon-extractions", type=int, default=dataset.HORIZON,
                   help=f"label: leaves within this many later extractions (default {dataset.HORIZON})")
    t.add_argument("--recompute-history", action="store_true",
                   help="first recompute, from their kept raw exports, the partitions computed by other code "
                        "than this checkout's (needed after a feature's transformation changed)")
    p = sub.add_parser("predict", help="score employees from their online features")
    p.add_argument("--employee-id", type=int, action="append", required=True)
    s = sub.add_parser("skew-check", help="compare online and offline values and event times, exactly")
    s.add_argument("--seed", type=int, default=None,
                   help=f"seed of the random sample taken above {model.EXHAUSTIVE_SKEW_CHECK} active employees "
                        "(default: fresh each run; the nightly DAG passes its run id)")
    args = parser.parse_args(argv)
    logsetup.setup()
    settings = settings_mod.load()
    try:
        resources = Resources.for_process(settings)
        if args.command == "train":
            result = model.train(resources, horizon=args.horizon_extractions, recompute=args.recompute_history)
            print(result.summary())
            return 0 if result.promoted else 1
        if args.command == "predict":
            scores = model.predict(resources, args.employee_id)
            print(json.dumps({"model": model.load_latest(settings).version,
                              "probability_of_leaving": {str(k): round(v, 4) for k, v in scores.items()}}, indent=2))
            return 0
        report = model.skew_check(resources, seed=args.seed)
        for line in report.mismatches[:50]:
            print(f"SKEW {line}")
        print(report.summary())
        return 1 if report.mismatches else 0
    except ServingError as exc:
        print(f"error ({exc.reason}): {exc}", file=sys.stderr)
        return 2 if exc.reason in {"no_model", "unavailable"} else 1
    except (ContractError, ValidationFailed, Busy, LeaseLost) as exc:  # --recompute-history could not recompute
        print(f"error: recomputing history stopped: {exc}", file=sys.stderr)
        return 1
    except dataset.MixedHistory as exc:  # needs a decision (recompute), unlike "no data yet"
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except dataset.DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (StorageError, redis.RedisError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    except sqlalchemy.exc.OperationalError as exc:
        print(f"error: the feature registry at {settings.registry_location} failed: {fs.registry_error(exc)}",
              file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
