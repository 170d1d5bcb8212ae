"""Schema ``multiview``: camera rigs, calibration, synchronised recordings and 3D pose.

::

    CalibrationBoard                      a ChArUco or checkerboard (anipose board.toml)
    CameraRig (+Camera)                   the cameras (upstream Device rows) filmed together
    CalibrationTask (+File)               board images / videos per camera, or an anipose
                                          calibration.toml, or a DeepLabCut 3D project
    Calibration (+Camera)                 populate(): intrinsics, distortion, pose, error per camera
    MultiCameraRecording (+View)          one VideoRecording per camera of a rig, checked in sync
    TriangulationParamSet                 min score, outlier threshold, smoothing
    TriangulationTask (+View)             which PoseEstimation of each view to triangulate
    Triangulation (+BodyPart)             populate(): 3D points, cameras used, reprojection error

The geometry lives in :mod:`element_pose.calibration` and :mod:`element_pose.triangulation`
(no database); file formats in :mod:`element_pose.io.anipose`.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import datajoint as dj
import numpy as np
import pandas as pd

from . import model, train
from .calibration import Board, Camera
from .hashing import canonical_json
from .jobs import RecoverJobs
from .names import check_name
from .paths import to_full, to_relative

schema = dj.Schema()
_linking_module = None

CALIBRATION_SOURCES = ("board", "anipose", "deeplabcut")
SYNC_MODES = ("frames", "timestamps")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def activate(schema_name: str, *, create_schema: bool = True, create_tables: bool = True,
             linking_module: Any = None) -> None:
    """Activate the ``multiview`` schema (after ``train`` and ``model``)."""
    global _linking_module
    if isinstance(linking_module, str):
        linking_module = importlib.import_module(linking_module)
    _linking_module = linking_module
    schema.activate(schema_name, create_schema=create_schema, create_tables=create_tables,
                    add_objects=linking_module.__dict__ if linking_module else None)


def _root_dirs() -> list[str]:
    return model._root_dirs()


# --- rigs and calibration -------------------------------------------------------------------


@schema
class CalibrationBoard(dj.Manual):
    """A calibration board; lengths in the unit of the 3D results (mm for anipose boards)."""

    definition = """
    board_name: varchar(32)
    ---
    board_kind: varchar(16)           # charuco | checkerboard
    squares_x: int16
    squares_y: int16
    square_length: float64
    marker_length=null: float64       # ChArUco only
    marker_bits=null: int16           # ChArUco dictionary DICT_<bits>X<bits>_<size>
    dict_size=null: int16
    board_unit='mm': varchar(8)
    """

    @classmethod
    def add(cls, name: str, board: Board | str | Path, unit: str = "mm") -> dict:
        """Insert a board (a :class:`Board` or an anipose ``board.toml``); an identical
        existing board is returned as is."""
        check_name(name, "board_name", 32)
        if not isinstance(board, Board):
            board = Board.from_toml(to_full(board, _root_dirs))
        row = {"board_name": name, "board_kind": board.kind, "squares_x": board.squares_x,
               "squares_y": board.squares_y, "square_length": float(board.square_length),
               "marker_length": board.marker_length,
               "marker_bits": board.marker_bits if board.kind == "charuco" else None,
               "dict_size": board.dict_size if board.kind == "charuco" else None, "board_unit": unit}
        key = {"board_name": name}
        if cls & key:
            if (cls & key).fetch1() != row:
                raise ValueError(f"Board {name!r} exists with other dimensions; choose another name.")
            return key
        cls.insert1(row)
        return key

    @classmethod
    def board(cls, key: dict) -> Board:
        row = (cls & key).fetch1()
        kwargs = {}
        if row["board_kind"] == "charuco":
            kwargs = {"marker_length": row["marker_length"], "marker_bits": int(row["marker_bits"]),
                      "dict_size": int(row["dict_size"])}
        return Board(kind=row["board_kind"], squares_x=int(row["squares_x"]),
                     squares_y=int(row["squares_y"]), square_length=row["square_length"], **kwargs)


@schema
class CameraRig(dj.Manual):
    """Cameras that film together; their order is the order of the calibration files."""

    definition = """
    rig_name: varchar(32)
    ---
    rig_description='': varchar(1000)
    """

    class Camera(dj.Part):
        definition = """
        -> master
        -> Device
        ---
        camera_index: int16           # order in the rig
        """

    @classmethod
    def add(cls, name: str, cameras: Sequence[str], description: str = "") -> dict:
        """Insert a rig of the named ``Device`` cameras (inserted into ``Device`` if absent)."""
        check_name(name, "rig_name", 32)
        cameras = list(cameras)
        if len(cameras) < 2 or len(set(cameras)) != len(cameras):
            raise ValueError(f"A rig needs two or more distinct cameras, got {cameras}.")
        key = {"rig_name": name}
        device = _linking_module.Device
        attr = device.primary_key[0]
        if cls & key:
            stored = cls.cameras(key)
            if stored != cameras:
                raise ValueError(f"Rig {name!r} exists with cameras {stored}; choose another name.")
            return key
        with cls.connection.transaction:
            for cam in cameras:
                device.insert1({attr: cam}, skip_duplicates=True)
            cls.insert1({**key, "rig_description": description})
            cls.Camera.insert({**key, attr: cam, "camera_index": i} for i, cam in enumerate(cameras))
        return key

    @classmethod
    def cameras(cls, key: dict) -> list[str]:
        """The rig's camera (Device) names in order."""
        attr = _linking_module.Device.primary_key[0]
        return [r[attr] for r in (cls.Camera & key).to_dicts(order_by="camera_index")]


@schema
class CalibrationTask(dj.Manual):
    """What to calibrate a rig from: board recordings per camera, or another tool's file."""

    definition = """
    -> CameraRig
    calibration_id: int16
    ---
    calibration_source: varchar(16)   # board | anipose | deeplabcut
    -> [nullable] CalibrationBoard
    source_path='': varchar(1000)     # anipose calibration.toml / DeepLabCut 3D project
    calibration_params=null: json     # board: video_step, refine; files: camera name mapping
    """

    class File(dj.Part):
        definition = """
        -> master
        -> CameraRig.Camera
        ---
        file_path: varchar(1000)      # a folder of board images, or a board video
        """

    @classmethod
    def add_board(cls, rig: dict, calibration_id: int, board: dict, files: Mapping[str, str | Path],
                  video_step: int = 10, refine: bool = True) -> dict:
        """Calibrate from board recordings: ``files`` maps each camera of the rig to a folder of
        images (views matched across cameras by the number ending each file name) or a video
        (matched by frame index, every ``video_step``-th frame)."""
        cameras = CameraRig.cameras(rig)
        _check_cameras(rig, cameras, files)
        if not CalibrationBoard & board:
            raise ValueError(f"Unknown board {board}; add it with CalibrationBoard.add().")
        if isinstance(video_step, bool) or not isinstance(video_step, int) or video_step < 1:
            raise ValueError(f"video_step must be a positive int, got {video_step!r}.")
        relative = {}
        for cam, path in files.items():
            full = to_full(path, _root_dirs)
            if full.is_dir() and not any(p.suffix.lower() in IMAGE_SUFFIXES for p in full.iterdir()):
                raise ValueError(f"{full} (camera {cam!r}) holds no images ({', '.join(IMAGE_SUFFIXES)}).")
            relative[cam] = to_relative(full, _root_dirs)
        key = {"rig_name": rig["rig_name"], "calibration_id": int(calibration_id)}
        row = {**key, "calibration_source": "board", "board_name": board["board_name"],
               "source_path": "", "calibration_params": {"video_step": video_step, "refine": refine}}
        attr = _linking_module.Device.primary_key[0]
        return cls._insert(row, [{**key, attr: cam, "file_path": relative[cam]} for cam in cameras])

    @classmethod
    def add_file(cls, rig: dict, calibration_id: int, path: str | Path, source: str = "anipose",
                 camera_names: Mapping[str, str] | None = None) -> dict:
        """Import another tool's calibration: an anipose ``calibration.toml`` or a DeepLabCut
        3D project (``camera_matrix/stereo_params.pickle``). ``camera_names`` maps the file's
        camera names to the rig's cameras (default: the same names)."""
        if source not in ("anipose", "deeplabcut"):
            raise ValueError(f"source must be 'anipose' or 'deeplabcut', got {source!r}.")
        cameras = CameraRig.cameras(rig)
        mapping = dict(camera_names or {})
        file_cams = [c.name for c in _read_calibration_file(to_full(path, _root_dirs), source)]
        rig_of = {c: mapping.get(c, c) for c in file_cams}
        missing = [c for c in cameras if c not in rig_of.values()]
        if missing:
            raise ValueError(f"{path} calibrates cameras {file_cams}; rig {rig['rig_name']!r} "
                             f"also has {missing}. Map the file's names with camera_names="
                             "{'file name': 'rig camera'}, or use a calibration of this rig.")
        key = {"rig_name": rig["rig_name"], "calibration_id": int(calibration_id)}
        row = {**key, "calibration_source": source, "board_name": None,
               "source_path": to_relative(to_full(path, _root_dirs), _root_dirs),
               "calibration_params": {"camera_names": mapping} if mapping else None}
        return cls._insert(row, [])

    @classmethod
    def _insert(cls, row: dict, files: list[dict]) -> dict:
        key = {k: row[k] for k in ("rig_name", "calibration_id")}
        if isinstance(row["calibration_id"], bool):
            raise TypeError("calibration_id must be an int.")
        if cls & key:
            existing = (cls & key).fetch1()
            same = all(canonical_json(existing[k]) == canonical_json(row[k]) for k in row)
            stored = (cls.File & key).to_dicts()
            if same and sorted(r["file_path"] for r in stored) == sorted(f["file_path"] for f in files):
                return key
            raise ValueError(f"Calibration task {key} exists with other inputs; use a new calibration_id.")
        with cls.connection.transaction:
            cls.insert1(row)
            if files:
                cls.File.insert(files)
        return key


def _check_cameras(rig: dict, cameras: list[str], given: Mapping[str, Any]) -> None:
    unknown = [c for c in given if c not in cameras]
    if unknown:
        raise ValueError(f"Cameras {unknown} are not in rig {rig['rig_name']!r} (its cameras: "
                         f"{cameras}); cameras of different rigs cannot be mixed.")
    missing = [c for c in cameras if c not in given]
    if missing:
        raise ValueError(f"Rig {rig['rig_name']!r} cameras {missing} are missing; give one entry "
                         f"for each of {cameras}.")


def _read_calibration_file(path: Path, source: str) -> list[Camera]:
    from .io.anipose import read_anipose_calibration, read_dlc3d_calibration

    return read_anipose_calibration(path) if source == "anipose" else read_dlc3d_calibration(path)


@schema
class Calibration(RecoverJobs, dj.Imported):
    """A rig's calibration: per camera intrinsics, distortion, pose and reprojection error.

    The world frame is the first camera's for board calibrations (the file's own for imports).
    """

    definition = """
    -> CalibrationTask
    ---
    n_cameras: int16
    mean_reprojection_error=null: float64   # px, board corners (board calibrations)
    shared_views=null: int32                # board views seen by two or more cameras
    calibration_seconds: float64
    calibration_time=CURRENT_TIMESTAMP: datetime
    """

    class Camera(dj.Part):
        definition = """
        -> master
        -> CameraRig.Camera
        ---
        image_width: int32
        image_height: int32
        camera_matrix: json           # 3x3 intrinsics
        distortion: json              # k1 k2 p1 p2 k3 (OpenCV)
        rotation: json                # Rodrigues vector, world -> camera
        translation: json             # world -> camera, board unit
        reprojection_error=null: float64   # px, mean over this camera's board corners
        initial_error=null: float64        # px, this camera alone before bundle adjustment
        n_views=null: int32                # board views used
        """

    def make_fetch(self, key: dict) -> tuple:
        task = (CalibrationTask & key).fetch1()
        attr = _linking_module.Device.primary_key[0]
        files = tuple((r[attr], r["file_path"]) for r in (CalibrationTask.File & key).to_dicts())
        board = asdict(CalibrationBoard.board(task)) if task["board_name"] else None
        return (task["calibration_source"], task["source_path"],
                canonical_json(task["calibration_params"] or {}), files, board,
                tuple(CameraRig.cameras(key)))

    def make_compute(self, key, source, source_path, params_json, files, board, cameras):
        from .calibration import calibrate, detect_in_images, detect_in_video

        params = json.loads(params_json)
        started = time.perf_counter()
        if source == "board":
            board = Board(**board)
            detections, sizes = {}, {}
            by_camera = dict(files)
            for cam in cameras:
                path = to_full(by_camera[cam], _root_dirs)
                if path.is_dir():
                    images = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
                    detections[cam], sizes[cam] = detect_in_images(images, board)
                else:
                    detections[cam], sizes[cam] = detect_in_video(path, board, int(params.get("video_step", 10)))
            result = calibrate(detections, sizes, board, refine=bool(params.get("refine", True)))
            found = {c.name: c for c in result.cameras}
            stats = {cam: (result.errors[cam], result.initial_errors[cam], result.views[cam]) for cam in cameras}
            mean_error = float(np.mean(list(result.errors.values())))
            shared = result.shared_views
        elif source in ("anipose", "deeplabcut"):
            mapping = params.get("camera_names", {})
            loaded = _read_calibration_file(to_full(source_path, _root_dirs), source)
            found = {mapping.get(c.name, c.name): c for c in loaded}
            stats = {cam: (None, None, None) for cam in cameras}
            mean_error, shared = None, None
        else:
            raise ValueError(f"Unknown calibration_source {source!r}; use one of {CALIBRATION_SOURCES}.")
        rows = [(cam, found[cam], *stats[cam]) for cam in cameras]
        return rows, mean_error, shared, time.perf_counter() - started

    def make_insert(self, key, rows, mean_error, shared, seconds) -> None:
        attr = _linking_module.Device.primary_key[0]
        self.insert1({**key, "n_cameras": len(rows), "mean_reprojection_error": mean_error,
                      "shared_views": shared, "calibration_seconds": seconds})
        self.Camera.insert(
            {**key, attr: cam, "image_width": c.size[0], "image_height": c.size[1],
             "camera_matrix": c.matrix.tolist(), "distortion": c.distortion.tolist(),
             "rotation": c.rotation.tolist(), "translation": c.translation.tolist(),
             "reprojection_error": error, "initial_error": initial, "n_views": views}
            for cam, c, error, initial, views in rows)

    @classmethod
    def cameras(cls, key: dict) -> list[Camera]:
        """The calibrated cameras in rig order."""
        keys = (cls & key).keys()
        if len(keys) != 1:
            raise ValueError(f"{key} matches {len(keys)} calibrations; give exactly one.")
        attr = _linking_module.Device.primary_key[0]
        order = {c: i for i, c in enumerate(CameraRig.cameras(keys[0]))}
        rows = sorted((cls.Camera & keys[0]).to_dicts(), key=lambda r: order[r[attr]])
        return [Camera(r[attr], (r["image_width"], r["image_height"]), r["camera_matrix"],
                       r["distortion"], r["rotation"], r["translation"]) for r in rows]

    @classmethod
    def export_anipose(cls, key: dict, path: str | Path) -> Path:
        """Write the calibration as an anipose ``calibration.toml``."""
        from .io.anipose import write_anipose_calibration

        cameras = cls.cameras(key)
        attr = _linking_module.Device.primary_key[0]
        errors = {r[attr]: r["reprojection_error"] for r in (cls.Camera & key).to_dicts()
                  if r["reprojection_error"] is not None}
        return write_anipose_calibration(path, cameras, errors)


# --- synchronised recordings ----------------------------------------------------------------


@schema
class MultiCameraRecording(dj.Manual):
    """One recording per camera of a rig, filmed together in one session."""

    definition = """
    -> Session
    multi_recording_id: int16
    ---
    -> CameraRig
    sync='frames': varchar(16)        # frames: frame i of every camera is one instant | timestamps
    multi_recording_description='': varchar(1000)
    """

    class View(dj.Part):
        definition = """
        -> master
        -> model.VideoRecording
        ---
        camera_index: int16           # order in the rig
        """

    @classmethod
    def add(cls, session_key: dict, multi_recording_id: int, rig: dict,
            recordings: Mapping[str, int], sync: str = "frames", description: str = "") -> dict:
        """Insert after checking the recordings belong to the rig's cameras and are in sync.

        ``recordings`` maps each camera of the rig to the ``recording_id`` of its
        ``VideoRecording`` in this session; ``RecordingInfo`` must be populated for them.
        ``sync="frames"`` requires equal frame counts; ``"timestamps"`` matches frames by
        time (``RecordingInfo.timestamps`` on one clock).
        """
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {SYNC_MODES}, got {sync!r}.")
        if isinstance(multi_recording_id, bool) or not isinstance(multi_recording_id, int):
            raise TypeError(f"multi_recording_id must be an int, got {multi_recording_id!r}.")
        cameras = CameraRig.cameras(rig)
        if not cameras:
            raise ValueError(f"Unknown rig {rig}; add it with CameraRig.add().")
        _check_cameras(rig, cameras, recordings)
        session = (_linking_module.Session & session_key).keys()
        if len(session) != 1:
            raise ValueError(f"{session_key} matches {len(session)} sessions; give exactly one.")
        attr = _linking_module.Device.primary_key[0]
        infos = []
        for cam in cameras:
            rec = {**session[0], "recording_id": int(recordings[cam])}
            if not model.VideoRecording & rec:
                raise ValueError(f"No VideoRecording {rec} (camera {cam!r}); add it first.")
            filmed_by = (model.VideoRecording & rec).fetch1(attr)
            if filmed_by != cam:
                raise ValueError(f"Recording {rec['recording_id']} was filmed by {filmed_by!r}, not "
                                 f"by camera {cam!r} of rig {rig['rig_name']!r}; cameras of "
                                 "different rigs cannot be mixed.")
            if not model.RecordingInfo & rec:
                raise ValueError(f"No RecordingInfo for {rec}; run RecordingInfo.populate() first.")
            infos.append((model.RecordingInfo & rec).fetch1())
        _frame_map(cameras, infos, sync)  # raises when they cannot be aligned
        key = {**session[0], "multi_recording_id": multi_recording_id}
        views = [{**key, "recording_id": int(recordings[cam]), "camera_index": i}
                 for i, cam in enumerate(cameras)]
        if cls & key:
            same = ((cls & key).fetch1("rig_name") == rig["rig_name"] and
                    sorted(r["recording_id"] for r in (cls.View & key).to_dicts())
                    == sorted(v["recording_id"] for v in views))
            if same:
                return key
            raise ValueError(f"Multi-camera recording {key} exists with other recordings; use a new id.")
        with cls.connection.transaction:
            cls.insert1({**key, "rig_name": rig["rig_name"], "sync": sync,
                         "multi_recording_description": description})
            cls.View.insert(views)
        return key

    @classmethod
    def frame_map(cls, key: dict) -> np.ndarray:
        """(cameras, frames) frame index of each camera for each frame of the first camera
        (-1 where a camera has none)."""
        row = (cls & key).fetch1()
        views = (cls.View & key).to_dicts(order_by="camera_index")
        infos = [(model.RecordingInfo & {**key, "recording_id": v["recording_id"]}).fetch1() for v in views]
        return _frame_map(CameraRig.cameras(row), infos, row["sync"])


def _frame_map(cameras: list[str], infos: list[dict], sync: str) -> np.ndarray:
    from .triangulation import align_by_timestamps

    counts = [int(i["frame_count"]) for i in infos]
    if sync == "frames":
        if len(set(counts)) != 1:
            detail = ", ".join(f"{c}: {n}" for c, n in zip(cameras, counts, strict=True))
            raise ValueError(f"The recordings have different frame counts ({detail}); they are not "
                             "frame-synchronised. Trim them, or add with sync='timestamps' when "
                             "their timestamps share a clock.")
        return np.tile(np.arange(counts[0]), (len(cameras), 1))
    return align_by_timestamps([np.asarray(i["timestamps"], float) for i in infos])


# --- triangulation --------------------------------------------------------------------------


@schema
class TriangulationParamSet(dj.Lookup):
    """Parameters of :func:`element_pose.triangulation.triangulate`, deduplicated by content."""

    definition = """
    triangulation_paramset_id: int16
    ---
    triangulation_description='': varchar(1000)
    params: json                      # full TriangulationParams (defaults filled in)
    params_sha256: char(64)
    unique index (params_sha256)
    """

    @classmethod
    def insert_new_params(cls, params: dict | None = None, paramset_id: int | None = None,
                          description: str = "") -> dict:
        """Validate and insert parameters; the same parameters return the existing key."""
        from .triangulation import TriangulationParams

        if params is not None and not isinstance(params, dict):
            raise TypeError(f"params must be a dict, got {type(params).__name__}.")
        full = TriangulationParams.from_dict(params).to_dict()
        return train.insert_hashed_params(cls, "triangulation_paramset_id", full, paramset_id,
                                          {"triangulation_description": description},
                                          lambda p: TriangulationParams.from_dict(p).to_dict())


@schema
class TriangulationTask(dj.Manual):
    """Triangulate the pose estimates of every view of a multi-camera recording."""

    definition = """
    -> MultiCameraRecording
    -> Calibration
    -> TriangulationParamSet
    pose_set='': varchar(32)          # names the choice of per-view models when there are several
    ---
    body_parts=null: json             # parts to triangulate (default: the models' parts)
    """

    class View(dj.Part):
        definition = """
        -> master
        -> model.PoseEstimation
        """

    @classmethod
    def add(cls, multi_recording: dict, calibration: dict, models: Mapping[str, str] | str,
            params: dict | None = None, body_parts: Sequence[str] | None = None,
            pose_set: str = "") -> dict:
        """Insert after checking that every camera has its ``PoseEstimation`` and the models
        share the body parts.

        ``models``: one model name for every view, or camera -> model name (per-view models).
        """
        recording = (MultiCameraRecording & multi_recording).fetch1()
        calib = (Calibration & calibration).keys()
        if len(calib) != 1:
            raise ValueError(f"{calibration} matches {len(calib)} calibrations; populate it or restrict the key.")
        calib = calib[0]
        if calib["rig_name"] != recording["rig_name"]:
            raise ValueError(f"Calibration {calib} is of rig {calib['rig_name']!r}, the recording of "
                             f"rig {recording['rig_name']!r}; use a calibration of that rig.")
        cameras = CameraRig.cameras(recording)
        if isinstance(models, str):
            models = {cam: models for cam in cameras}
        _check_cameras(recording, cameras, models)
        views = (MultiCameraRecording.View & recording).to_dicts(order_by="camera_index")
        session = {k: recording[k] for k in _linking_module.Session.primary_key}
        pose_keys, parts = [], {}
        for cam, view in zip(cameras, views, strict=True):
            pose_key = {**session, "recording_id": view["recording_id"], "model_name": models[cam]}
            if not model.PoseEstimation & pose_key:
                raise ValueError(f"No PoseEstimation of recording {view['recording_id']} (camera "
                                 f"{cam!r}) by model {models[cam]!r}; populate it first.")
            pose_keys.append(pose_key)
            parts[cam] = model.Model.bodyparts(pose_key)
        # default: every part any view's model has (so a part one model lacks is reported)
        wanted = list(body_parts) if body_parts is not None else list(
            dict.fromkeys(p for cam in cameras for p in parts[cam]))
        lacking = {cam: [p for p in wanted if p not in have] for cam, have in parts.items()}
        lacking = {cam: missing for cam, missing in lacking.items() if missing}
        if lacking:
            detail = "; ".join(f"camera {c!r} lacks {m}" for c, m in lacking.items())
            raise ValueError(f"Body parts missing from some views' models: {detail}. Use models "
                             "with the same parts, or pass body_parts= with the parts all views have.")
        if pose_set:
            check_name(pose_set, "pose_set", 32)
        if params is None:
            paramset = TriangulationParamSet.insert_new_params({})
        else:
            paramset = TriangulationParamSet.insert_new_params(params)
        key = {**{k: recording[k] for k in MultiCameraRecording.primary_key}, **calib, **paramset,
               "pose_set": pose_set}
        row = {**key, "body_parts": list(body_parts) if body_parts is not None else None}
        if cls & key:
            stored = sorted(r["model_name"] + str(r["recording_id"]) for r in (cls.View & key).to_dicts())
            if stored == sorted(k["model_name"] + str(k["recording_id"]) for k in pose_keys) and \
                    (cls & key).fetch1("body_parts") == row["body_parts"]:
                return key
            raise ValueError(f"Triangulation task {key} exists with other views; use another pose_set.")
        with cls.connection.transaction:
            cls.insert1(row)
            cls.View.insert({**key, **pk} for pk in pose_keys)
        return key


    @classmethod
    def views(cls, key: dict) -> list[dict]:
        """The task's PoseEstimation keys, in the rig's camera order."""
        order = {v["recording_id"]: v["camera_index"]
                 for v in (MultiCameraRecording.View & key).to_dicts()}
        return sorted((cls.View & key).to_dicts(), key=lambda v: order[v["recording_id"]])


@schema
class Triangulation(RecoverJobs, dj.Computed):
    """3D body-part positions of a multi-camera recording, one row per first-camera frame."""

    definition = """
    -> TriangulationTask
    ---
    n_frames: int32
    median_reprojection_error=null: float64   # px, over all triangulated points
    mean_cameras_used: float64
    fraction_triangulated: float64            # points with enough agreeing cameras
    triangulation_seconds: float64
    triangulation_time=CURRENT_TIMESTAMP: datetime
    """

    class BodyPart(dj.Part):
        definition = """
        -> master
        body_part: varchar(64)
        ---
        body_part_index: int16
        x: <npy@main>                 # calibration unit (mm), one per frame (NaN = not triangulated)
        y: <npy@main>
        z: <npy@main>
        reprojection_error: <npy@main>   # px, mean over the cameras used
        n_cameras: <npy@main>            # cameras used
        score: <npy@main>                # mean likelihood of the detections used
        """

    def make_fetch(self, key: dict) -> tuple:
        task = (TriangulationTask & key).fetch1()
        recording = (MultiCameraRecording & key).fetch1()
        views = TriangulationTask.views(key)
        poses = []
        for view in views:
            pose, parts = model.PoseEstimation.pose_array(view)
            poses.append((pose, tuple(parts)))
        params = (TriangulationParamSet & key).fetch1("params")
        cameras = Calibration.cameras(key)
        return (poses, tuple(task["body_parts"] or poses[0][1]), canonical_json(params),
                [c.to_dict() for c in cameras], MultiCameraRecording.frame_map(recording))

    def make_compute(self, key, poses, body_parts, params_json, cameras, frame_map):
        from .triangulation import triangulate

        started = time.perf_counter()
        cams = [Camera(**c) for c in cameras]
        n_frames = frame_map.shape[1]
        stacked = np.full((len(poses), n_frames, len(body_parts), 3), np.nan)
        for c, (pose, parts) in enumerate(poses):
            columns = [list(parts).index(p) for p in body_parts]
            ok = frame_map[c] >= 0
            stacked[c, ok] = pose[frame_map[c][ok]][:, columns]
        out = triangulate(stacked[..., :2], cams, stacked[..., 2], json.loads(params_json))
        return out, list(body_parts), time.perf_counter() - started

    def make_insert(self, key, out, body_parts, seconds) -> None:
        done = np.isfinite(out.points[..., 0])
        self.insert1({**key, "n_frames": int(out.points.shape[0]),
                      "median_reprojection_error": float(np.median(out.errors[done])) if done.any() else None,
                      "mean_cameras_used": float(out.n_cameras[done].mean()) if done.any() else 0.0,
                      "fraction_triangulated": float(done.mean()), "triangulation_seconds": seconds})
        self.BodyPart.insert(
            {**key, "body_part": part, "body_part_index": k, "x": out.points[:, k, 0].copy(),
             "y": out.points[:, k, 1].copy(), "z": out.points[:, k, 2].copy(),
             "reprojection_error": out.errors[:, k].copy(),
             "n_cameras": out.n_cameras[:, k].astype(np.int16), "score": out.scores[:, k].copy()}
            for k, part in enumerate(body_parts))

    @classmethod
    def _one_key(cls, key: dict) -> dict:
        keys = (cls & key).keys()
        if len(keys) != 1:
            raise ValueError(f"Expected one Triangulation row for {key}, found {len(keys)}; restrict the key.")
        return keys[0]

    @classmethod
    def points_array(cls, key: dict) -> tuple[np.ndarray, list[str], dict[str, np.ndarray]]:
        """(frames, parts, 3) points, part names, and (frames, parts) arrays ``error``,
        ``n_cameras``, ``score``."""
        rows = (cls.BodyPart & cls._one_key(key)).to_dicts(order_by="body_part_index")
        points = np.stack([np.column_stack([r["x"], r["y"], r["z"]]) for r in rows], axis=1)
        extra = {name: np.stack([np.asarray(r[column], float) for r in rows], axis=1)
                 for name, column in (("error", "reprojection_error"), ("n_cameras", "n_cameras"),
                                      ("score", "score"))}
        return points, [r["body_part"] for r in rows], extra

    @classmethod
    def get_timestamps(cls, key: dict) -> np.ndarray:
        """Time (s) of each frame: the first camera's ``RecordingInfo.timestamps``."""
        key = cls._one_key(key)
        first = (MultiCameraRecording.View & key).to_dicts(order_by="camera_index")[0]
        return np.asarray((model.RecordingInfo & first).fetch1("timestamps"), float)

    @classmethod
    def get_trajectory(cls, key: dict, body_parts: Sequence[str] | None = None,
                       index: str = "frame") -> pd.DataFrame:
        """3D trajectories: columns (body part, coord) with coords x, y, z, error, n_cameras,
        score; rows by frame (``index="frame"``) or by time in seconds (``"time"``)."""
        key = cls._one_key(key)
        points, parts, extra = cls.points_array(key)
        if body_parts is not None:
            unknown = sorted(set(body_parts) - set(parts))
            if unknown:
                raise ValueError(f"Unknown body parts {unknown}; this triangulation has {parts}.")
        chosen = list(body_parts) if body_parts is not None else parts
        columns = {}
        for part in chosen:
            k = parts.index(part)
            for axis, name in enumerate("xyz"):
                columns[(part, name)] = points[:, k, axis]
            for name in ("error", "n_cameras", "score"):
                columns[(part, name)] = extra[name][:, k]
        frame = pd.DataFrame(columns)
        frame.columns = pd.MultiIndex.from_tuples(frame.columns, names=["bodyparts", "coords"])
        if index == "time":
            frame.index = pd.Index(cls.get_timestamps(key), name="time")
        elif index == "frame":
            frame.index.name = "frame"
        else:
            raise ValueError(f"index must be 'frame' or 'time', got {index!r}.")
        return frame

    @classmethod
    def export_anipose(cls, key: dict, path: str | Path) -> Path:
        """anipose's ``points3d`` CSV (``<part>_x ... _score`` and ``fnum``), which anipose's
        plotting and analysis scripts read."""
        from .io.anipose import points3d_dataframe, write_points3d_csv

        points, parts, extra = cls.points_array(key)
        table = points3d_dataframe(points, parts, extra["error"], extra["n_cameras"], extra["score"])
        return write_points3d_csv(path, table)

    @classmethod
    def export_h5(cls, key: dict, path: str | Path) -> Path:
        """The trajectories of :meth:`get_trajectory` as a pandas HDF5 file (key ``points3d``)."""
        from .io.hdf5 import write_hdf

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_hdf(cls.get_trajectory(key), path, key="points3d")
        return path

    @classmethod
    def export_nwb(cls, key: dict, path: str | Path, overwrite: bool = False,
                   subject: dict | None = None) -> Path:
        """3D pose to NWB (ndx-pose): one PoseEstimationSeries (F, 3) per body part in the
        calibration's unit, confidence = mean likelihood of the detections used."""
        from datetime import datetime

        from . import __version__
        from .io.nwb import export_nwb as write

        key = cls._one_key(key)
        points, parts, extra = cls.points_array(key)
        session = (_linking_module.Session & key).fetch1()
        start = session.get("session_datetime") or datetime.now()
        if not isinstance(start, datetime):
            start = datetime.fromisoformat(str(start))
        fields = {**model._subject_fields(key, start), **(subject or {})}
        board = (CalibrationTask & key).fetch1("board_name")
        unit = (CalibrationBoard & {"board_name": board}).fetch1("board_unit") if board else "mm"
        cameras = CameraRig.cameras(key)
        pose = np.concatenate([points, extra["score"][..., None]], axis=-1)
        return write(
            path, pose, parts, cls.get_timestamps(key), session_start_time=start, subject=fields,
            session_description=session.get("session_description") or f"element-pose 3D {key}",
            source_software="element-pose", source_software_version=__version__,
            description=f"3D positions triangulated from cameras {cameras} (calibration "
                        f"{key['rig_name']}/{key['calibration_id']}).",
            confidence_definition="Mean likelihood of the 2D detections used for the point.",
            unit={"mm": "millimeters", "m": "meters", "cm": "centimeters"}.get(unit, unit),
            reference_frame=f"World frame of calibration {key['rig_name']}/{key['calibration_id']} "
                            f"(the first camera's, {cameras[0]}, for board calibrations); z along "
                            "its optical axis.",
            overwrite=overwrite, nwbfile_fields={"keywords": ["pose estimation", "3D", "behavior"]})

    @classmethod
    def plot_trajectory(cls, key: dict, body_parts: Sequence[str] | None = None):
        """3D paths of the body parts (a matplotlib Figure)."""
        from .plotting import plot_trajectory_3d

        key = cls._one_key(key)
        points, parts, _ = cls.points_array(key)
        if body_parts is not None:
            points = points[:, [parts.index(p) for p in body_parts]]
            parts = list(body_parts)
        board = (CalibrationTask & key).fetch1("board_name")
        unit = (CalibrationBoard & {"board_name": board}).fetch1("board_unit") if board else "mm"
        return plot_trajectory_3d(points, parts, unit=unit, title=f"{key}")

    @classmethod
    def plot_reprojection(cls, key: dict, frame: int = 0):
        """The reprojection check of one frame: each camera's video frame with its 2D
        detections and the 3D points drawn back onto it (a matplotlib Figure)."""
        from .engine.video import read_frame
        from .plotting import plot_reprojection

        key = cls._one_key(key)
        points, parts, _ = cls.points_array(key)
        if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)) or not 0 <= frame < len(points):
            raise ValueError(f"frame must be an int in 0..{len(points) - 1}, got {frame!r}.")
        cameras = Calibration.cameras(key)
        frame_map = MultiCameraRecording.frame_map(key)
        views = TriangulationTask.views(key)
        images, detections = [], []
        for c, view in enumerate(views):
            local = int(frame_map[c, frame])
            pose, view_parts = model.PoseEstimation.pose_array(view)
            columns = [view_parts.index(p) for p in parts]
            if local < 0:
                detections.append(np.full((len(parts), 2), np.nan))
                images.append(np.zeros((cameras[c].size[1], cameras[c].size[0]), np.uint8))
                continue
            detections.append(pose[local][columns, :2])
            images.append(read_frame(model.VideoRecording.file_paths(view)[0], local))
        reprojected = np.stack([cam.project(points[frame]) for cam in cameras])
        return plot_reprojection(images, np.stack(detections), reprojected,
                                 [c.name for c in cameras], parts, title=f"frame {frame}")
