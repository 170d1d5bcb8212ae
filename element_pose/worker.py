"""``element-pose worker``: populate the Element's tables on any machine that reaches the lab
database and object store, as many workers as the cluster starts.

Coordination is DataJoint's job reservation in the database (``populate(reserve_jobs=True)``):
two workers never make the same key. Each sweep goes through the computed tables in dependency
order, one key at a time per table, so a worker that trains a model picks up the analyses it
enables on its next sweep; a sweep that finds no work ends the worker, or, with ``poll``,
waits and looks again. Before each table the worker puts back to pending the jobs of workers
that died (:mod:`element_pose.jobs`). SIGTERM (SLURM's time limit, ``kubectl delete``) releases
the key being made and ends the worker with status 143.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("element_pose.worker")

#: The Element's computed tables in dependency order: (module, table).
TABLE_ORDER = (
    ("model", "RecordingInfo"),
    ("train", "ModelTraining"),
    ("model", "ModelEvaluation"),
    ("model", "PoseEstimation"),
    ("model", "FilteredPose"),
    ("model", "LabeledVideo"),
    ("refine", "OutlierScore"),
    ("multiview", "Calibration"),
    ("multiview", "Triangulation"),
)


@dataclass
class WorkerReport:
    """What one worker did: keys made and failed per table, sweeps, seconds."""

    made: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    sweeps: int = 0
    seconds: float = 0.0
    stopped_by: str = "no work left"

    @property
    def total_made(self) -> int:
        return sum(self.made.values())


def element_tables(pipeline: Any, only: list[str] | None = None) -> list:
    """The Element's computed tables of an activated pipeline module, in dependency order.

    ``only`` restricts them by class name (e.g. ``["PoseEstimation"]``).
    """
    tables = []
    for module_name, table_name in TABLE_ORDER:
        module = getattr(pipeline, module_name, None)
        if module is None or not hasattr(module, table_name):
            continue
        if only and table_name not in only:
            continue
        tables.append(getattr(module, table_name)())
    if only:
        unknown = sorted(set(only) - {t.__class__.__name__ for t in tables})
        if unknown:
            raise ValueError(f"Unknown tables {unknown}; the worker runs {[t for _, t in TABLE_ORDER]}.")
    return tables


def run_worker(tables: list, *, poll: float | None = None, max_seconds: float | None = None,
               max_jobs: int | None = None, restriction: Any = None,
               should_stop: Callable[[], bool] | None = None) -> WorkerReport:
    """Populate ``tables`` (in order) with job reservation until no work is left.

    Parameters
    ----------
    tables : list
        Table instances in dependency order (:func:`element_tables`).
    poll : float, optional
        When no work is left, wait this many seconds and look again (forever) instead of ending.
    max_seconds : float, optional
        Start no new job after this much time.
    max_jobs : int, optional
        End after this many keys made (or failed).
    restriction : optional
        Restrict every table's keys (e.g. ``{"subject": "m1"}``).
    should_stop : callable, optional
        Checked between jobs; True ends the worker (used by tests and embedding code).
    """
    started = time.monotonic()
    report = WorkerReport()
    restrictions = () if restriction is None else (restriction,)

    def out_of_budget() -> str | None:
        if should_stop is not None and should_stop():
            return "asked to stop"
        if max_seconds is not None and time.monotonic() - started >= max_seconds:
            return f"time limit ({max_seconds:g} s)"
        if max_jobs is not None and report.total_made + sum(report.failed.values()) >= max_jobs:
            return f"job limit ({max_jobs})"
        return None

    while True:
        report.sweeps += 1
        worked = False
        for table in tables:
            name = table.__class__.__name__
            while (reason := out_of_budget()) is None:
                result = table.populate(*restrictions, reserve_jobs=True, max_calls=1,
                                        suppress_errors=True)
                made, errors = result["success_count"], result["error_list"]
                if not made and not errors:
                    break
                worked = True
                report.made[name] = report.made.get(name, 0) + made
                if errors:
                    report.failed[name] = report.failed.get(name, 0) + len(errors)
                    for key, message in errors:
                        logger.error("%s %s failed: %s", name, key, str(message).splitlines()[0][:300])
                else:
                    logger.info("%s: made 1 key (%d so far)", name, report.made[name])
            if reason is not None:
                report.stopped_by = reason
                report.seconds = time.monotonic() - started
                return report
        if not worked:
            if poll is None:
                break
            logger.info("No work; looking again in %g s.", poll)
            time.sleep(poll)
    report.seconds = time.monotonic() - started
    return report


def main_worker(pipeline_module: str, *, gpu: str | None = None, poll: float | None = None,
                max_seconds: float | None = None, max_jobs: int | None = None,
                tables: list[str] | None = None, restrict: str | None = None) -> int:
    """The ``element-pose worker`` command; returns the exit status."""
    restriction = None
    if restrict:
        try:
            restriction = json.loads(restrict)
        except json.JSONDecodeError as error:
            raise SystemExit(f"--restrict must be a JSON object, e.g. '{{\"subject\": \"m1\"}}': {error}") from None
        if not isinstance(restriction, dict):
            raise SystemExit("--restrict must be a JSON object of attribute: value.")
    if gpu is not None:
        # before torch is imported: the worker sees only this GPU ("" = CPU only)
        os.environ["CUDA_VISIBLE_DEVICES"] = "" if gpu == "cpu" else gpu
    pipeline = importlib.import_module(pipeline_module)
    # Import the engine (torch, torchvision, OpenCV) before SIGTERM raises: an exception raised
    # inside torch's import, which ``make()`` would otherwise do lazily, aborts the process
    # (status -6) instead of releasing the key.
    importlib.import_module("element_pose.engine.multianimal")
    importlib.import_module("element_pose.engine.train")

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    chosen = element_tables(pipeline, tables)
    logger.info("Worker pid %d on %s: %s", os.getpid(), pipeline_module,
                ", ".join(t.__class__.__name__ for t in chosen))
    try:
        report = run_worker(chosen, poll=poll, max_seconds=max_seconds, max_jobs=max_jobs,
                            restriction=restriction)
    except SystemExit as stopped:
        logger.warning("Stopped by signal; the key in progress is pending again.")
        return int(stopped.code) if isinstance(stopped.code, int) else 143
    made = ", ".join(f"{k} {v}" for k, v in report.made.items()) or "nothing"
    failed = ", ".join(f"{k} {v}" for k, v in report.failed.items())
    print(f"worker {os.getpid()}: made {made}" + (f"; failed {failed}" if failed else "")
          + f"; {report.sweeps} sweep(s), {report.seconds:.1f} s; stopped: {report.stopped_by}",
          flush=True)
    return 1 if report.failed else 0
