"""The ``element-pose`` command line.

    element-pose db      which database and object store are in use (never the password)
    element-pose demo    the end-to-end demo on the embedded database
    element-pose gc      list (--delete: remove) object-store files no row refers to
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``element-pose`` command."""
    parser = argparse.ArgumentParser(prog="element-pose", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("db", help="show the database and object store in use")
    demo = sub.add_parser("demo", help="run the end-to-end demo (sample -> train -> evaluate -> analyze)")
    demo.add_argument("--out", help="folder for plots, videos and exports")
    demo.add_argument("--train-seconds", type=float, help="training wall-clock budget")
    gc = sub.add_parser("gc", help="list (or delete) object-store files no row refers to, "
                                   "e.g. left by a killed import or populate")
    gc.add_argument("--delete", action="store_true",
                    help="delete them (stop imports and populate workers first)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if args.command == "db":
        from . import db

        info = db.connect()
        print(info.describe())
        return 0
    if args.command == "gc":
        import datajoint as dj

        from . import db
        from .storage import collect_garbage

        db.connect()
        names = [db.schema_prefix() + suffix for suffix in ("train", "model")]
        existing = set(dj.list_schemas())
        schemas = [dj.Schema(n, create_schema=False, create_tables=False)
                   for n in names if n in existing]
        if not schemas:
            print(f"No element-pose schemas ({', '.join(names)}) in this database.")
            return 0
        stats = collect_garbage(schemas, delete=args.delete)
        orphans = stats.get("schema_paths_orphaned", 0) + stats.get("hash_paths_orphaned", 0)
        size = (stats.get("schema_paths_orphaned_bytes", 0)
                + stats.get("hash_paths_orphaned_bytes", 0))
        verb = "deleted" if args.delete else "found (run with --delete to remove them)"
        print(f"{orphans} orphaned object-store files ({size / 2**20:.1f} MiB) {verb} in "
              f"{', '.join(s.database for s in schemas)}.")
        return 0
    if args.command == "demo":
        try:
            from workflow.demo import run_demo
        except ImportError:
            print("The demo lives in the repository's workflow/ package; run it from a checkout "
                  "installed with `pip install -e .`.", file=sys.stderr)
            return 2
        run_demo(out_dir=args.out, train_seconds=args.train_seconds)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
