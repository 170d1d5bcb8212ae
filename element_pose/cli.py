"""The ``element-pose`` command line.

    element-pose db      which database and object store are in use (never the password)
    element-pose demo    the end-to-end demo on the embedded database
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if args.command == "db":
        from . import db

        info = db.connect()
        print(info.describe())
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
