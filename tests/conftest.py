"""Shared fixtures.

The database is the embedded PostgreSQL unless DataJoint's settings name a server (``DJ_HOST``
etc.), so the same tests run on the embedded database, the PostgreSQL service and MariaDB.
Every session uses fresh schema names and drops them at the end.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if os.environ.get("ELEMENT_POSE_SHARED_DATA"):
    SHARED_DATA = Path(os.environ["ELEMENT_POSE_SHARED_DATA"])


def shared_dataset(name: str) -> Path:
    """Path of a dataset in ../shared/data, or skip the test when it is absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent (shared benchmark data not available)")
    return path


@pytest.fixture(scope="session")
def pose_home() -> Path:
    """A private ELEMENT_POSE_HOME (embedded database + store) for the whole session.

    Outside pytest's own temporary root: run as root, the embedded server runs as its own
    ``pgserver`` user, and a second pytest session on the machine makes that root private
    again (mode 700), cutting the first session's server off from its data. Removed at exit,
    after the server has stopped (atexit runs the server's stop, registered later, first).
    """
    home = Path(tempfile.mkdtemp(prefix="element_pose_home_"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    os.environ["ELEMENT_POSE_HOME"] = str(home)
    os.environ["ELEMENT_POSE_ROOT_DATA_DIR"] = str(home / "data")
    (home / "data").mkdir(exist_ok=True)
    return home


@pytest.fixture(scope="session")
def pipeline(pose_home):
    """The sample workflow, activated on fresh schemas; dropped after the session."""
    os.environ["ELEMENT_POSE_PREFIX"] = f"t{uuid.uuid4().hex[:8]}_"
    from workflow import pipeline as pl

    yield pl
    pl.db.stop_embedded_on_exit()
    for schema in (pl.multiview.schema, pl.refine.schema, pl.model.schema, pl.train.schema, pl.lab):
        try:
            schema.drop(prompt=False)
        except Exception as error:  # leave the database usable even if a drop fails
            print(f"could not drop {schema.database}: {error}")


@pytest.fixture
def data_root(pipeline) -> Path:
    """The root data directory of the sample workflow."""
    return Path(pipeline.get_pose_root_data_dir()[0])


@pytest.fixture
def session_key(pipeline):
    """A subject and session to hang recordings on."""
    pipeline.Subject.insert1({"subject": "mouse1"}, skip_duplicates=True)
    key = {"subject": "mouse1", "session_id": 1}
    pipeline.Session.insert1({**key, "session_datetime": "2026-11-20 10:00:00"}, skip_duplicates=True)
    pipeline.Device.insert1({"device": "cam0"}, skip_duplicates=True)
    return key


def write_video(path: Path, n_frames: int, width: int = 64, height: int = 48, fps: float = 25.0,
                fourcc: str = "mp4v") -> Path:
    """Write a video whose frame i has a bright square at column 2*i (for content checks)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened(), f"cannot write {path}"
    for i in range(n_frames):
        frame = np.full((height, width, 3), 40, np.uint8)
        x = (2 * i) % (width - 8)
        frame[10:18, x : x + 8] = 230
        writer.write(frame)
    writer.release()
    return path


def pytest_collection_modifyitems(config, items):
    """Mark every test that touches the database with ``db`` (CI reruns those per backend)."""
    for item in items:
        if {"pipeline", "session_key", "data_root"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.db)


def add_recording(pipeline, subject: str, device: str, video_path, session_id: int = 1,
                  recording_id: int = 1) -> tuple[dict, dict]:
    """Subject, session, camera and a populated recording of ``video_path``.

    Returns (session key, recording key).
    """
    pipeline.Subject.insert1({"subject": subject}, skip_duplicates=True)
    session = {"subject": subject, "session_id": session_id}
    pipeline.Session.insert1({**session, "session_datetime": "2026-11-02 08:00:00"},
                             skip_duplicates=True)
    pipeline.Device.insert1({"device": device}, skip_duplicates=True)
    key = pipeline.model.VideoRecording.add(session, recording_id, {"device": device},
                                            [video_path])
    pipeline.model.RecordingInfo.populate(key)
    return session, key
