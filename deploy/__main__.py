"""`python -m deploy validate`: validate helm-values/, deploy/k8s/ and deploy/ray/ offline (exit 0 ok, 1 problems)."""

from __future__ import annotations

import argparse
import sys

from deploy import validate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy", description=__doc__)
    parser.add_argument("command", choices=["validate"])
    parser.parse_args(argv)
    problems = validate.check_all()
    for problem in problems:
        print(f"PROBLEM {problem}")
    releases, documents = len(validate.RELEASES), len(validate.manifests()) + len(validate.manifests(validate.RAY_DIR))
    print(f"{len(problems)} problem(s) in {releases} Helm releases and {documents} manifests "
          f"(Kubernetes {validate.TARGET_KUBERNETES_VERSION}, strict)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
