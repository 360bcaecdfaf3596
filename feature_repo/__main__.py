"""``python -m feature_repo``: the supported replacement for ``feast apply`` on this repository.

    python -m feature_repo --home H apply [--version VIEW=VERSION ...]
    python -m feature_repo --home H versions
    python -m feature_repo --home H materialize [--full]

``apply`` without ``--version`` uses, for each view, its only version folder; a view with several
must be named explicitly, so a new extraction never goes live by accident.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from atrx.errors import AtrxError, debug_enabled
from atrx.workspace import Workspace


def _versions(ws: Workspace, pinned: Sequence[str]) -> dict[str, str]:
    from feature_repo.layout import available_versions, check_view

    chosen: dict[str, str] = {}
    for item in pinned:
        view, sep, version = item.partition("=")
        if not sep:
            raise SystemExit(f"--version expects VIEW=VERSION, got {item!r}")
        chosen[check_view(view)] = version
    for view, found in available_versions(ws).items():
        if view in chosen:
            continue
        if len(found) > 1:
            raise SystemExit(
                f"view {view!r} has several version folders {found}; pick one with "
                f"--version {view}=VERSION"
            )
        chosen[view] = found[0]
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run one command; returns the exit status.

    An :class:`atrx.errors.AtrxError` prints its message and fix and returns its exit code, as
    ``atrx`` does (``ATRX_DEBUG=1``: the traceback instead).
    """
    try:
        return _main(argv)
    except AtrxError as err:
        if debug_enabled():
            raise
        print(f"error: {err.message}", file=sys.stderr)
        if err.fix:
            print(f"fix: {err.fix}", file=sys.stderr)
        return int(err.exit_code)


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m feature_repo", description="Register and materialize ATRX feature views."
    )
    parser.add_argument(
        "--home", default=None, help="workspace (default: $ATRX_HOME, else ./.atrx)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_apply = sub.add_parser(
        "apply", help="register the entity and the views of the chosen versions"
    )
    p_apply.add_argument("--version", action="append", default=[], metavar="VIEW=VERSION")
    sub.add_parser("versions", help="print the registered version of every view")
    p_mat = sub.add_parser("materialize", help="load the newest values into the online store")
    p_mat.add_argument("--full", action="store_true", help="reload everything from 1970")
    args = parser.parse_args(argv)

    from feature_repo import store

    ws = Workspace.at(args.home)
    if args.command == "apply":
        applied = store.apply(ws, _versions(ws, args.version))
        print("applied:", ", ".join(applied) or "nothing (no version folder has part files)")
    elif args.command == "versions":
        for view, version in store.registered_versions(ws).items():
            print(f"{view}\t{version}")
    else:
        print("materialized:", ", ".join(store.materialize(ws, full=args.full).views))
    return 0


if __name__ == "__main__":
    sys.exit(main())
