"""`python -m bench`: throughput of our steps next to the limit measured in the same run.

    python -m bench                       # everything at the default sizes
    python -m bench etl --rows 1000000    # one benchmark, chosen sizes
    python -m bench materialize --entities 100000
    python -m bench validate --validate-rows 1000000
    python -m bench health --health-entities 100000
    python -m bench retrieval --label-rows 100000
    python -m bench serving               # feature server and inference API on loopback (needs `hey`)
    python -m bench engine-materialize engine-retrieval   # FP_COMPUTE_ENGINE=ray next to the default

Each measurement runs in a fresh process so its peak RSS is its own. Ratios are ours / limit
(1.0 = as fast as the limit). Numbers are printed, never asserted: tests do not time things.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from bench import measure

# kind -> (title, unit, default sizes, the option that overrides the sizes)
BENCHMARKS = {
    "etl": ("ETL: raw HR export CSV -> features Parquet on S3 (read, transform, write, upload)", "rows",
            (10_000, 100_000, 1_000_000), "rows"),
    "validate": ("Validation: features suite (Great Expectations) on one partition, after import", "rows",
                 (1_000_000,), "validate_rows"),
    "materialize": ("Materialization: features partition on S3 -> Redis (feast materialize, batched)", "entities",
                    (100_000, 1_000_000), "entities"),
    "health": ("Online store check: freshness + coverage + eviction over every entity in Redis", "entities",
               (100_000,), "health_entities"),
    "retrieval": ("Training retrieval: get_historical_features (feature service) vs 1M feature rows, every row kept",
                  "rows", (100_000, 1_000_000), "label_rows"),
    "engine-materialize": ("Ray engine (local mode): materialization; ratio = Ray / default engine", "entities",
                           (1_000_000,), "entities"),
    "engine-retrieval": ("Ray engine (local mode): training retrieval vs 1M feature rows; ratio = Ray / default engine",
                         "rows", (1_000_000,), "label_rows"),
}


def run_isolated(kind: str, size: int) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench.measure", kind, str(size)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark {kind} {size} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.rjust(w) for c, w in zip(cells, widths))


def report(title: str, unit: str, results: list[dict]) -> None:
    widths = [10, 10, 12, 10, 12, 8, 10, 10]
    print(f"\n{title}")
    print(_row(["size", "ours s", f"ours {unit}/s", "limit s", f"limit {unit}/s", "ratio", "ours MB", "limit MB"], widths))
    for r in results:
        print(_row([f"{r['size']:,}", f"{r['ours_s']:.2f}", f"{r['size'] / r['ours_s']:,.0f}", f"{r['limit_s']:.2f}",
                    f"{r['size'] / r['limit_s']:,.0f}", f"{r['ours_s'] / r['limit_s']:.1f}x",
                    f"{r['ours_peak_mb']:,.0f}", f"{r['limit_peak_mb']:,.0f}"], widths))
    print(f"  limit: {results[0]['limit']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("which", nargs="*", metavar="{" + ",".join([*BENCHMARKS, "serving"]) + "}",
                        help="benchmarks to run (default: all)")
    parser.add_argument("--rows", type=int, action="append", help="ETL sizes (raw rows)")
    parser.add_argument("--entities", type=int, action="append", help="materialization sizes (entities)")
    parser.add_argument("--validate-rows", type=int, action="append", help="validation sizes (partition rows)")
    parser.add_argument("--health-entities", type=int, action="append", help="online store check sizes (entities)")
    parser.add_argument("--label-rows", type=int, action="append", help="training retrieval sizes (label rows)")
    args = parser.parse_args(argv)
    which = args.which or [*BENCHMARKS, "serving"]
    unknown = set(which) - set(BENCHMARKS) - {"serving"}
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    for kind in which:
        if kind == "serving":
            subprocess.run([sys.executable, "-m", "bench.serving"], check=True)
            continue
        title, unit, sizes, option = BENCHMARKS[kind]
        report(title, unit, [run_isolated(kind, n) for n in (getattr(args, option) or sizes)])
    print(f"\nmachine: {measure.machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
