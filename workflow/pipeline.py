"""The sample lab pipeline: Subject, Session and Device (camera) tables, with element-pose's
``train``, ``model``, ``refine`` and ``multiview`` schemas activated beside them (the DataJoint Elements linking-module
pattern).

Importing this module connects to the database (embedded PostgreSQL unless DataJoint's settings
name a server) and declares the tables::

    from workflow.pipeline import train, model, Session, Subject, Device
"""

from __future__ import annotations

import os
from pathlib import Path

import datajoint as dj

from element_pose import activate, db, model, multiview, refine, train

__all__ = ["Subject", "Session", "Device", "train", "model", "refine", "multiview", "get_pose_root_data_dir",
           "connection_info"]

connection_info = db.connect()
_prefix = db.schema_prefix()

lab = dj.Schema(f"{_prefix}lab")


@lab
class Subject(dj.Manual):
    definition = """
    subject: varchar(32)
    ---
    sex='U': varchar(1)               # M | F | U | O
    species='Mus musculus': varchar(64)
    subject_birth_date=null: date
    subject_description='': varchar(1000)
    """


@lab
class Session(dj.Manual):
    definition = """
    -> Subject
    session_id: int16
    ---
    session_datetime: datetime
    session_description='': varchar(1000)
    """


@lab
class Device(dj.Lookup):
    """Cameras."""

    definition = """
    device: varchar(32)
    ---
    modality='camera': varchar(32)
    device_description='': varchar(1000)
    """


def get_pose_root_data_dir() -> list[str]:
    """Root data directories: ``$ELEMENT_POSE_ROOT_DATA_DIR`` (``os.pathsep``-separated),
    else ``<ELEMENT_POSE_HOME>/data``."""
    env = os.environ.get("ELEMENT_POSE_ROOT_DATA_DIR")
    if env:
        return [p for p in env.split(os.pathsep) if p]
    root = db.home() / "data"
    root.mkdir(parents=True, exist_ok=True)
    return [str(root)]


def get_pose_processed_data_dir() -> Path:
    """Where training work files go."""
    path = db.home() / "processed"
    path.mkdir(parents=True, exist_ok=True)
    return path


activate(_prefix, linking_module=__name__)
