"""Calibrations and 3D outputs in the files anipose and DeepLabCut 3D use (database-free).

- anipose ``calibration.toml`` (``[cam_N]`` tables: name, size, matrix, distortions, rotation,
  translation), read and written;
- DeepLabCut 3D ``stereo_params.pickle`` (a camera pair from ``cv2.stereoCalibrate``), read
  after checking the pickle calls no code;
- anipose's ``points3d`` CSV (``<part>_x/_y/_z/_error/_ncams/_score`` columns and ``fnum``).
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..calibration import Camera

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file, naming the file in the error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; check the path.")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid TOML: {error}") from error


def read_anipose_calibration(path: str | Path) -> list[Camera]:
    """Cameras of an anipose ``calibration.toml``, in the file's ``cam_0, cam_1, ...`` order."""
    data = read_toml(path)
    tables = sorted((k for k in data if k.startswith("cam_")), key=lambda k: int(k[4:]))
    if not tables:
        raise ValueError(f"{path} has no [cam_N] tables; is it an anipose calibration.toml?")
    cameras = []
    for table in tables:
        cam = data[table]
        try:
            cameras.append(Camera(name=str(cam.get("name", table)), size=tuple(cam["size"]),
                                  matrix=cam["matrix"], distortion=cam["distortions"],
                                  rotation=cam["rotation"], translation=cam["translation"]))
        except KeyError as missing:
            raise ValueError(f"{path} [{table}] lacks {missing}.") from None
    names = [c.name for c in cameras]
    if len(set(names)) != len(names):
        raise ValueError(f"{path} names a camera twice: {names}.")
    return cameras


def write_anipose_calibration(path: str | Path, cameras: Sequence[Camera],
                              errors: dict[str, float] | None = None) -> Path:
    """Write an anipose ``calibration.toml`` (anipose and aniposelib load it)."""
    import tomli_w

    data: dict[str, Any] = {}
    for i, cam in enumerate(cameras):
        data[f"cam_{i}"] = {"name": cam.name, "size": list(cam.size), "matrix": cam.matrix.tolist(),
                            "distortions": cam.distortion.tolist(), "rotation": cam.rotation.tolist(),
                            "translation": cam.translation.tolist()}
    meta: dict[str, Any] = {"written_by": "element-pose"}
    if errors:
        meta["error"] = float(np.mean(list(errors.values())))
    data["metadata"] = meta
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tomli_w.dumps(data).encode())
    return path


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays, nothing that could run other code."""

    _allowed = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it would call {module}.{name}; only numpy arrays are read")


def read_dlc3d_calibration(path: str | Path) -> list[Camera]:
    """The two cameras of a DeepLabCut 3D project.

    ``path`` is the project folder (``camera_matrix/stereo_params.pickle`` in it) or the pickle.
    The first camera is the world frame (``cv2.stereoCalibrate``'s R, T give the second).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "camera_matrix" / "stereo_params.pickle"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; give a DeepLabCut 3D project folder or its "
                                "camera_matrix/stereo_params.pickle.")
    try:
        with open(path, "rb") as stream:
            params = _NumpyOnlyUnpickler(stream).load()
    except pickle.UnpicklingError as error:
        raise ValueError(f"{path} not loaded: {error}") from error
    if not isinstance(params, dict) or len(params) != 1:
        raise ValueError(f"{path} should hold one camera pair (a dict keyed 'cam1-cam2'); found "
                         f"{list(params) if isinstance(params, dict) else type(params).__name__}.")
    (pair, p), = params.items()
    names = str(pair).split("-", 1)
    if len(names) != 2:
        raise ValueError(f"{path}: pair name {pair!r} is not 'camera1-camera2'.")
    try:
        sizes = p["image_shape"]
        first = Camera(names[0], tuple(sizes[0]), p["cameraMatrix1"], np.ravel(p["distCoeffs1"]))
        second = Camera(names[1], tuple(sizes[1]), p["cameraMatrix2"], np.ravel(p["distCoeffs2"]))
    except KeyError as missing:
        raise ValueError(f"{path} lacks {missing}; is it DeepLabCut's stereo_params.pickle?") from None
    import cv2

    second.rotation = cv2.Rodrigues(np.asarray(p["R"], np.float64))[0].reshape(3)
    second.translation = np.asarray(p["T"], np.float64).reshape(3)
    return [first, second]


def points3d_dataframe(points: np.ndarray, bodyparts: Sequence[str], errors: np.ndarray,
                       n_cameras: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """anipose's ``points3d`` table: per part x, y, z, error, ncams, score; ``fnum`` per row."""
    columns: dict[str, np.ndarray] = {}
    for k, part in enumerate(bodyparts):
        for axis, name in enumerate("xyz"):
            columns[f"{part}_{name}"] = points[:, k, axis]
        columns[f"{part}_error"] = errors[:, k]
        columns[f"{part}_ncams"] = n_cameras[:, k]
        columns[f"{part}_score"] = scores[:, k]
    frame = pd.DataFrame(columns)
    frame["fnum"] = np.arange(len(points))
    return frame


def write_points3d_csv(path: str | Path, frame: pd.DataFrame) -> Path:
    """Write the ``points3d`` table as anipose's CSV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path
