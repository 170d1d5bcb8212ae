"""Jobs that survive crashes: recover work of dead or stopped workers, list and retry failures.

DataJoint 2.x's job tables record, per reserved key, the worker's host, pid and database
connection. A worker killed by SIGKILL leaves its key ``reserved`` forever; one stopped by
SIGTERM (what SLURM sends at its time limit) or Ctrl-C leaves it as an ``error``. Either way a
later ``populate(reserve_jobs=True)`` skips the key. :class:`RecoverJobs`, mixed into every
computed table of the Element, makes ``populate(reserve_jobs=True)``

* put back to ``pending`` the reservations of workers that are gone (their database
  connection is closed, and on this host their process is gone too) and keys whose worker
  was interrupted rather than failed (``SystemExit``/``KeyboardInterrupt``), and
* release the key it is working on when it is stopped by SIGTERM, so it is pending at once.

Real errors stay errors until someone looks: ``element-pose jobs`` lists them with their
messages; ``--retry`` puts them back to pending.
"""

from __future__ import annotations

import logging
import os
import platform

import datajoint as dj

logger = logging.getLogger(__name__)

#: error messages of interrupted (not failed) work, as DataJoint records them
INTERRUPTED = ("SystemExit", "KeyboardInterrupt")


def live_connection_ids(connection: dj.Connection) -> set[int]:
    """Ids of the connections open on the database server now."""
    if connection.adapter.backend == "postgresql":
        rows = connection.query("SELECT pid FROM pg_stat_activity").fetchall()
    else:
        rows = connection.query("SELECT ID FROM information_schema.PROCESSLIST").fetchall()
    return {int(r[0]) for r in rows}


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _repend(jobs, key: dict) -> None:
    """Put a job back to pending (as DataJoint's own orphan handling does)."""
    row = (jobs & key).to_dicts()[0]
    (jobs & key).delete_quick()
    jobs.insert1({**key, "status": "pending", "priority": row["priority"]})


def recover(table: dj.Table) -> dict:
    """Put the jobs of dead or interrupted workers of ``table`` back to pending.

    Returns ``{"orphaned": n, "interrupted": m}``.
    """
    jobs = table.jobs
    if not jobs.is_declared:
        return {"orphaned": 0, "interrupted": 0}
    pk = jobs.primary_key
    live = live_connection_ids(table.connection)
    host = platform.node()
    orphaned = 0
    for row in jobs.reserved.to_dicts():
        if row["connection_id"] in live and row["connection_id"] != 0:
            # The connection is open; on this host, trust the process table over it.
            if row["host"] != host or _process_alive(int(row["pid"])):
                continue
        elif row["host"] == host and _process_alive(int(row["pid"])) and row["pid"] != os.getpid():
            continue  # reconnected worker still running here
        _repend(jobs, {k: row[k] for k in pk})
        orphaned += 1
    interrupted = 0
    for row in jobs.errors.to_dicts():
        if str(row["error_message"]).startswith(INTERRUPTED):
            _repend(jobs, {k: row[k] for k in pk})
            interrupted += 1
    if orphaned or interrupted:
        logger.warning("%s: %d job(s) of dead workers and %d interrupted job(s) are pending "
                       "again.", table.__class__.__name__, orphaned, interrupted)
    return {"orphaned": orphaned, "interrupted": interrupted}


def release_own_interrupted(table: dj.Table) -> int:
    """Put this process's interrupted jobs of ``table`` back to pending (after SIGTERM)."""
    jobs = table.jobs
    if not jobs.is_declared:
        return 0
    mine = jobs.errors & {"host": platform.node(), "pid": os.getpid()}
    count = 0
    for row in mine.to_dicts():
        if str(row["error_message"]).startswith(INTERRUPTED):
            _repend(jobs, {k: row[k] for k in jobs.primary_key})
            count += 1
    return count


class RecoverJobs:
    """Mixin for computed tables: ``populate(reserve_jobs=True)`` recovers the work of dead
    workers first and releases its own key when stopped by SIGTERM or Ctrl-C."""

    def populate(self, *restrictions, **kwargs):
        """DataJoint's ``populate``; with ``reserve_jobs=True`` jobs survive crashes."""
        if not kwargs.get("reserve_jobs"):
            return super().populate(*restrictions, **kwargs)
        recover(self)
        try:
            return super().populate(*restrictions, **kwargs)
        except (SystemExit, KeyboardInterrupt):
            released = release_own_interrupted(self)
            logger.warning("Stopped; %d reserved job(s) released for other workers.", released)
            raise


def job_report(tables: list[dj.Table]) -> list[dict]:
    """Per table: counts by status, and each error and reservation with its details."""
    report = []
    for table in tables:
        jobs = table.jobs
        entry = {"table": table.__class__.__name__, "pending": 0, "reserved": [], "errors": []}
        if jobs.is_declared:
            entry["pending"] = len(jobs.pending)
            pk = jobs.primary_key
            entry["reserved"] = [{"key": {k: r[k] for k in pk}, "host": r["host"], "pid": r["pid"],
                                  "since": str(r["reserved_time"])}
                                 for r in jobs.reserved.to_dicts()]
            entry["errors"] = [{"key": {k: r[k] for k in pk}, "message": r["error_message"],
                                "host": r["host"], "when": str(r["completed_time"])}
                               for r in jobs.errors.proj("error_message", "host",
                                                         "completed_time").to_dicts()]
        report.append(entry)
    return report


def retry_errors(table: dj.Table) -> int:
    """Put every error job of ``table`` back to pending; returns how many."""
    jobs = table.jobs
    if not jobs.is_declared:
        return 0
    keys = jobs.errors.keys()
    for key in keys:
        _repend(jobs, key)
    return len(keys)
