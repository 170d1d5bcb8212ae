"""Read-only access to the lab database for the web pages: virtual modules of the Element's
schemas (no table code, no CREATE), the lab's Subject/Session tables found through the foreign
keys of ``model.VideoRecording``, and queries that never fetch a blob of a whole table.

Keys come from URLs: :meth:`LabDatabase.key` keeps only a table's primary-key attributes and
converts them to the column's type, so a URL can only restrict, never name a file.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import datajoint as dj
import numpy as np

PAGE_SIZE = 50
SCHEMAS = ("train", "model", "refine", "multiview")


class NotFound(LookupError):
    """No such row (the page answers 404)."""


def _pg_catalog_primary_keys(adapter) -> None:
    """Make DataJoint read PostgreSQL primary keys from pg_catalog, which every role can read.

    DataJoint 2.3 reads them from information_schema.table_constraints, which PostgreSQL shows
    only to roles with a privilege besides SELECT on the table; the foreign keys it already
    reads from pg_catalog. The queries return the same columns as DataJoint's own.
    """
    join = ("FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum "
            "WHERE i.indisprimary ")

    def get_primary_key_sql(schema_name: str, table_name: str) -> str:
        return (f"SELECT a.attname AS column_name {join}"
                f"AND n.nspname = {adapter.quote_string(schema_name)} "
                f"AND c.relname = {adapter.quote_string(table_name)} ORDER BY k.ord")

    def load_primary_keys_sql(schemas_list: str, like_pattern: str) -> str:
        return ("SELECT '\"' || n.nspname || '\".\"' || c.relname || '\"' AS tab, a.attname AS column_name "
                f"{join}AND c.relname NOT LIKE {like_pattern} AND n.nspname IN ({schemas_list})")

    adapter.get_primary_key_sql = get_primary_key_sql
    adapter.load_primary_keys_sql = load_primary_keys_sql


class LabDatabase:
    """The Element's schemas of this database, read-only."""

    def __init__(self) -> None:
        from .. import db

        db.connect()
        connection = dj.conn()
        if connection.adapter.backend == "postgresql":
            _pg_catalog_primary_keys(connection.adapter)
        self.prefix = db.schema_prefix()
        existing = set(dj.list_schemas())
        self.modules: dict[str, Any] = {}
        quiet = logging.getLogger("datajoint")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # reading the definitions back warns about native types
        try:
            for suffix in SCHEMAS:
                name = self.prefix + suffix
                if name in existing:
                    self.modules[suffix] = dj.VirtualModule(suffix, name, create_tables=False)
        finally:
            quiet.setLevel(level)
        if "model" not in self.modules:
            raise RuntimeError(f"No {self.prefix}model schema in this database: nothing to browse. "
                               "Set ELEMENT_POSE_PREFIX to the lab's prefix.")
        self.model = self.modules["model"]
        if not self.model.VideoRecording.primary_key:
            raise RuntimeError("DataJoint cannot read the tables' primary keys with this database "
                               "user; grant it SELECT on the Element's schemas.")
        self.train = self.modules.get("train")
        conn = self.model.VideoRecording.connection
        conn.dependencies.load_all_upstream()  # the lab's Session / Subject schema too
        recording_pk = set(self.model.VideoRecording.primary_key)
        self.session = self.subject = None
        for parent in self.model.VideoRecording.parents():
            table = dj.FreeTable(conn, parent)
            if set(table.primary_key) < recording_pk:
                self.session = table
        if self.session is not None:
            for parent in self.session.parents():
                table = dj.FreeTable(conn, parent)
                if set(table.primary_key) < set(self.session.primary_key):
                    self.subject = table

    # -- keys and pages ---------------------------------------------------------------------

    @staticmethod
    def key(table, params: Mapping[str, str]) -> dict:
        """The primary-key attributes of ``table`` in ``params``, typed; NotFound when one is
        missing or malformed."""
        key = {}
        for name in table.primary_key:
            if name not in params:
                raise NotFound(f"missing {name}")
            value = params[name]
            attr = table.heading.attributes[name]
            try:
                if attr.numeric:
                    key[name] = int(value) if "int" in attr.type.lower() else float(value)
                else:
                    key[name] = str(value)
            except ValueError:
                raise NotFound(f"{name} must be a number") from None
        if not table & key:
            raise NotFound(f"no row {key}")
        return key

    @staticmethod
    def page(query, page: int, order_by: str | list[str] | None = None,
             size: int = PAGE_SIZE) -> tuple[list[dict], int]:
        """One page of rows (non-blob attributes) and the number of pages."""
        if isinstance(query, type):
            query = query()
        total = len(query)
        pages = max(1, -(-total // size))
        page = min(max(1, page), pages)
        rows = query.to_dicts(order_by=order_by or query.primary_key, limit=size,
                              offset=(page - 1) * size)
        return rows, pages

    @staticmethod
    def plain(table) -> Any:
        """The table projected on its attributes that are neither blobs nor objects."""
        keep = [name for name, attr in table.heading.attributes.items()
                if not (attr.is_blob or attr.codec is not None or name in table.primary_key)]
        return table.proj(*keep)

    # -- pages' data ------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        out = {}
        if self.subject is not None:
            out["subjects"] = len(self.subject)
        if self.session is not None:
            out["sessions"] = len(self.session)
        out["recordings"] = len(self.model.VideoRecording())
        out["pose estimations"] = len(self.model.PoseEstimation())
        out["models"] = len(self.model.Model())
        if self.train is not None:
            out["labeled datasets"] = len(self.train.LabeledDataset())
        return out

    def pose_arrays(self, key: dict, parts: list[str] | None = None,
                    columns: tuple[str, ...] = ("x", "y", "likelihood")) -> tuple[np.ndarray, list[str]]:
        """(frames, parts, len(columns)) of one pose estimation, only the parts asked for."""
        query = self.model.PoseEstimation.BodyPartPosition & key
        if parts:
            query = query & [{"body_part": p} for p in parts]
        rows = query.proj(*columns).to_dicts()
        order = {p: i for i, p in enumerate(self.bodyparts(key))}
        rows.sort(key=lambda r: order.get(r["body_part"], 0))
        array = np.stack([np.stack([np.asarray(r[c], float) for c in columns], -1) for r in rows], 1)
        return array, [r["body_part"] for r in rows]

    def bodyparts(self, key: dict) -> list[str]:
        rows = (self.model.Model.BodyPart & {"model_name": key["model_name"]}).to_dicts(order_by="part_index")
        return [r["body_part"] for r in rows]

    def computed_tables(self) -> list:
        tables = []
        for module in self.modules.values():
            for name in sorted(vars(module)):
                obj = getattr(module, name)
                if isinstance(obj, type) and issubclass(obj, (dj.Computed, dj.Imported)):
                    tables.append(obj())
        return tables
