"""Deployment checks and image pinning.

  python -m deploy validate [--release]   validate helm-values/, deploy/k8s/ and deploy/ray/ offline
                                          (--release: also every image pinned by digest)
  python -m deploy pin-images [--built worker=sha256:...] [--check]
                                          record each image's digest where it is written
  python -m deploy images [--version]     every image the deployment runs, where it is written
                                          (--version: the one tag of the images built here)

Exit codes: 0 ok; 1 problems found, images built here left unpinned, or (--check) a tag serving
other content than the digest recorded; 2 a registry could not be read or an argument is wrong
(nothing is written then).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deploy import images, validate


def _validate(release: bool) -> int:
    problems = validate.check_all(release=release)
    for problem in problems:
        print(f"PROBLEM {problem}")
    releases, documents = len(validate.RELEASES), len(validate.manifests()) + len(validate.manifests(validate.RAY_DIR))
    print(f"{len(problems)} problem(s) in {releases} Helm releases and {documents} manifests "
          f"(Kubernetes {validate.TARGET_KUBERNETES_VERSION}, strict{', release: images by digest' if release else ''})")
    return 1 if problems else 0


def _pin(built: list[str], check: bool, plain_http: list[str], root: Path) -> int:
    try:
        given = dict(item.split("=", 1) for item in built)
    except ValueError:
        print(f"--built takes NAME=sha256:<digest>, got {built}", file=sys.stderr)
        return 2
    found = images.uses(root)
    try:
        changes, missing = images.plan(found, given, frozenset(plain_http),
                                       progress=lambda line: print(line, file=sys.stderr))
    except (ValueError, images.RegistryError) as exc:
        print(f"ERROR {exc}", file=sys.stderr)
        print("Nothing was written.", file=sys.stderr)
        return 2
    for change in changes:
        was = change.use.reference.digest or "no digest"
        print(f"{'WOULD PIN' if check else 'PIN'} {change.use.where}: {change.use.reference.name}:"
              f"{change.use.reference.tag} {was} -> {change.digest}")
    for line in missing:
        print(f"UNPINNED {line}")
    if check:
        print(f"{len(changes)} digest(s) differ from what the tags serve now; {len(missing)} built image use(s) unpinned "
              "(`validate --release` refuses those)")
        return 1 if changes else 0
    images.pin(changes)
    print(f"recorded {len(changes)} digest(s) in {len({c.use.path for c in changes})} file(s); "
          f"{len(missing)} built image use(s) still unpinned")
    return 1 if missing else 0


def _images(root: Path, version: bool) -> int:
    try:
        found = images.uses(root)
        if version:
            print(images.built_version(found))
            return 0
    except ValueError as exc:
        print(f"ERROR {exc}", file=sys.stderr)
        return 1
    for use in found:
        origin = f"built here ({use.built})" if use.built else use.reference.registry
        print(f"{use.where}\t{use.reference}\t{origin}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("validate", help="validate the deployment offline")
    check.add_argument("--release", action="store_true",
                       help="also require every image to be pinned by digest (run before installing)")
    pin = commands.add_parser("pin-images", help="record every image's digest where it is written")
    pin.add_argument("--built", action="append", default=[], metavar="NAME=DIGEST",
                     help=f"digest of an image built from this repository, as its push printed ({', '.join(images.BUILT)})")
    pin.add_argument("--check", action="store_true",
                     help="write nothing; exit 1 if any tag now serves another digest than the one recorded")
    pin.add_argument("--root", type=Path, default=images.ROOT, metavar="DIR",
                     help="the checkout whose deploy/ and helm-values/ to pin (default: this one)")
    pin.add_argument("--plain-http", action="append", default=[], metavar="HOST:PORT",
                     help="a registry spoken to over http, not https (a local registry)")
    listing = commands.add_parser("images", help="every image the deployment runs, where it is written")
    listing.add_argument("--version", action="store_true", help="print the one tag of the images built here")
    listing.add_argument("--root", type=Path, default=images.ROOT, metavar="DIR", help="the checkout to read")
    args = parser.parse_args(argv)
    if args.command == "validate":
        return _validate(args.release)
    if args.command == "images":
        return _images(args.root, args.version)
    return _pin(args.built, args.check, args.plain_http, args.root)


if __name__ == "__main__":
    sys.exit(main())
