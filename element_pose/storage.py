"""Object-store housekeeping: what a failed insert wrote, and orphans of older failures.

DataJoint writes ``<object@>``/``<npy@>`` files when a row is inserted, before the transaction
commits; when the transaction rolls back, the files stay. :func:`remove_uncommitted` deletes
those of one primary-key value right after a failed insert; :func:`collect_garbage` (the
``element-pose gc`` command) uses DataJoint's garbage collector for stores that already hold
orphans.
"""

from __future__ import annotations

import logging

import datajoint as dj

logger = logging.getLogger(__name__)

STORE = "main"


def remove_uncommitted(table: dj.Table, key: dict, store: str = STORE) -> int:
    """Delete the store files written for ``key`` in ``table`` (a failed, rolled-back insert).

    Only call this when no committed row of ``table`` matches ``key``; files of other keys are
    never touched. Returns the number of files deleted.
    """
    if table & key:
        return 0  # committed by someone else meanwhile: those files are live
    collector = dj.gc.GarbageCollector(table.connection.schemas[table.database], store=store)
    marker = "/" + "/".join([table.table_name.strip('`"'), *(f"{k}={v}" for k, v in key.items())]) + "/"
    removed = 0
    for path in collector.list_schema_paths(table.database):
        if marker in "/" + path and collector.delete_schema_path(path):
            removed += 1
    if removed:
        logger.info("Removed %d store files of the failed insert of %s", removed, key)
    return removed


def collect_garbage(schemas: list[dj.Schema], delete: bool = False, store: str = STORE) -> dict:
    """Report (and with ``delete``, remove) store files no row refers to.

    Do not delete while imports or ``populate`` calls are running: their files are written
    before their rows commit.
    """
    collector = dj.gc.GarbageCollector(*schemas, store=store)
    return collector.collect(dry_run=not delete)
