"""The ``element-pose`` command line.

    element-pose db      which database and object store are in use (never the password)
    element-pose demo    the end-to-end demo on the embedded database (--animals 2: two animals)
    element-pose gc      list (--delete: remove) object-store files no row refers to
    element-pose jobs    pending / reserved / failed work per table (--retry: failed -> pending)
    element-pose worker  populate every computed table with job reservation (run one per GPU/node)
    element-pose serve   a read-only web page over the lab database
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
    demo.add_argument("--animals", type=int, choices=(1, 2), default=1,
                      help="2: the two-animal demo (detection, tracking, identity)")
    gc = sub.add_parser("gc", help="list (or delete) object-store files no row refers to, "
                                   "e.g. left by a killed import or populate")
    gc.add_argument("--delete", action="store_true",
                    help="delete them (stop imports and populate workers first)")
    jobs = sub.add_parser("jobs", help="pending, reserved and failed work per computed table")
    jobs.add_argument("--retry", action="store_true",
                      help="put failed jobs back to pending (after fixing their cause)")
    jobs.add_argument("--recover", action="store_true",
                      help="put jobs of dead or interrupted workers back to pending now")
    worker = sub.add_parser("worker", help="populate the computed tables with job reservation "
                                           "until no work is left (start as many as you like)")
    worker.add_argument("--pipeline", default="workflow.pipeline",
                        help="module that activates the Element (default: workflow.pipeline)")
    worker.add_argument("--gpu", help="the GPU this worker uses (CUDA index), or 'cpu'")
    worker.add_argument("--poll", type=float,
                        help="when idle, look for work again every POLL seconds (default: end)")
    worker.add_argument("--max-seconds", type=float, help="start no job after this many seconds")
    worker.add_argument("--max-jobs", type=int, help="end after this many jobs")
    worker.add_argument("--tables", nargs="+", help="only these tables, e.g. PoseEstimation")
    worker.add_argument("--restrict", help='only keys matching this JSON, e.g. \'{"subject": "m1"}\'')
    serve = sub.add_parser("serve", help="browse the lab database in a web page (read-only)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--token", help="required on every request (default $ELEMENT_POSE_WEB_TOKEN); "
                                       "needed when --host is not this machine")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if args.command == "db":
        from . import db

        info = db.connect()
        print(info.describe())
        return 0
    if args.command == "jobs":
        return _jobs(args)
    if args.command == "serve":
        import os

        from .web.app import serve as run_server

        run_server(args.host, args.port, args.token or os.environ.get("ELEMENT_POSE_WEB_TOKEN"))
        return 0
    if args.command == "worker":
        from .worker import main_worker

        logging.getLogger("element_pose").setLevel(logging.INFO)
        return main_worker(args.pipeline, gpu=args.gpu, poll=args.poll, max_seconds=args.max_seconds,
                           max_jobs=args.max_jobs, tables=args.tables, restrict=args.restrict)
    if args.command == "gc":
        import datajoint as dj

        from . import db
        from .storage import collect_garbage

        db.connect()
        names = [db.schema_prefix() + suffix for suffix in ("train", "model", "refine", "multiview")]
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
            from workflow.demo_pair import run_pair_demo
        except ImportError:
            print("The demo lives in the repository's workflow/ package; run it from a checkout "
                  "installed with `pip install -e .`.", file=sys.stderr)
            return 2
        run = run_pair_demo if args.animals == 2 else run_demo
        run(out_dir=args.out, train_seconds=args.train_seconds)
        return 0
    return 2


def _computed_tables() -> list:
    """The Element's computed and imported tables, read from the database (no code needed)."""
    import datajoint as dj

    from . import db

    db.connect()
    existing = set(dj.list_schemas())
    tables = []
    for suffix in ("multiview", "refine", "model", "train"):
        name = db.schema_prefix() + suffix
        if name not in existing:
            continue
        module = dj.VirtualModule(suffix, name)
        for attr in sorted(vars(module)):
            obj = getattr(module, attr)
            if isinstance(obj, type) and issubclass(obj, (dj.Computed, dj.Imported)):
                tables.append(obj())
    return tables


def _jobs(args) -> int:
    from .jobs import job_report, recover, retry_errors

    tables = _computed_tables()
    if not tables:
        print("No element-pose schemas in this database.")
        return 0
    for table in tables:
        if args.recover:
            recover(table)
        if args.retry:
            count = retry_errors(table)
            if count:
                print(f"{table.__class__.__name__}: {count} failed job(s) back to pending")
    for entry in job_report(tables):
        print(f"{entry['table']}: {entry['pending']} pending, {len(entry['reserved'])} reserved, "
              f"{len(entry['errors'])} failed")
        for r in entry["reserved"]:
            print(f"  reserved {r['key']} by {r['host']} pid {r['pid']} since {r['since']}")
        for e in entry["errors"]:
            message = e["message"].splitlines()[0][:300] if e["message"] else ""
            print(f"  failed   {e['key']} on {e['host']} at {e['when']}: {message}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
