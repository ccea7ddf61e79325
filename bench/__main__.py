"""`python -m bench`: throughput of our steps next to the limit measured in the same run.

    python -m bench                       # everything at the default sizes
    python -m bench etl --rows 1000000    # one benchmark, chosen sizes
    python -m bench materialize --entities 100000
    python -m bench validate --validate-rows 1000000
    python -m bench health --health-entities 100000

Each measurement runs in a fresh process so its peak RSS is its own. Ratios are ours / limit
(1.0 = as fast as the limit). Numbers are printed, never asserted: tests do not time things.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from bench import measure

DEFAULT_ETL_ROWS = (10_000, 100_000, 1_000_000)
DEFAULT_ENTITIES = (100_000, 1_000_000)
DEFAULT_VALIDATE_ROWS = (1_000_000,)
DEFAULT_HEALTH_ENTITIES = (100_000,)
KINDS = ("etl", "validate", "materialize", "health")


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
    parser.add_argument("which", nargs="*", metavar="{etl,validate,materialize,health}",
                        help="benchmarks to run (default: all)")
    parser.add_argument("--rows", type=int, action="append", help="ETL sizes (raw rows)")
    parser.add_argument("--entities", type=int, action="append", help="materialization sizes (entities)")
    parser.add_argument("--validate-rows", type=int, action="append", help="validation sizes (partition rows)")
    parser.add_argument("--health-entities", type=int, action="append", help="online store check sizes (entities)")
    args = parser.parse_args(argv)
    which = args.which or list(KINDS)
    unknown = set(which) - set(KINDS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    if "etl" in which:
        report("ETL: raw HR export CSV -> features Parquet on S3 (read, transform, write, upload)", "rows",
               [run_isolated("etl", n) for n in (args.rows or DEFAULT_ETL_ROWS)])
    if "validate" in which:
        report("Validation: features suite (Great Expectations) on one partition, after import", "rows",
               [run_isolated("validate", n) for n in (args.validate_rows or DEFAULT_VALIDATE_ROWS)])
    if "materialize" in which:
        report("Materialization: features partition on S3 -> Redis (feast materialize, batched)", "entities",
               [run_isolated("materialize", n) for n in (args.entities or DEFAULT_ENTITIES)])
    if "health" in which:
        report("Online store check: freshness + coverage + eviction over every entity in Redis", "entities",
               [run_isolated("health", n) for n in (args.health_entities or DEFAULT_HEALTH_ENTITIES)])
    print(f"\nmachine: {measure.machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
