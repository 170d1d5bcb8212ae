"""Multi-camera calibration from views of a board (database-free).

Boards are found with OpenCV (ChArUco or plain checkerboard). Each camera's intrinsics come
from ``cv2.calibrateCamera`` on its own views; the cameras' poses are chained through views of
the board that two cameras share, then all cameras, their intrinsics and the board poses are
refined together by bundle adjustment (``scipy.optimize.least_squares`` with a sparse
Jacobian). The world frame is that of the first (reference) camera; units are those of the
board's square length (usually mm).

A :class:`Camera` holds one camera's model and projects and undistorts points.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

BOARD_KINDS = ("charuco", "checkerboard")
MIN_CORNERS = 8          # board corners for a view to count (calibrateCamera needs >= 4, spread)
MIN_VIEWS = 4            # views per camera for its intrinsics
_ARUCO_SIZES = (50, 100, 250, 1000)


# --- boards ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Board:
    """A calibration board.

    Attributes
    ----------
    kind : str
        ``"charuco"`` or ``"checkerboard"``.
    squares_x, squares_y : int
        Squares along x and y (inner corners are one fewer each way).
    square_length : float
        Side of a square, in the unit of the 3D results (mm in anipose's board files).
    marker_length : float or None
        ChArUco marker side, same unit.
    marker_bits, dict_size : int
        ArUco dictionary: ``DICT_{bits}X{bits}_{size}``.
    """

    kind: str
    squares_x: int
    squares_y: int
    square_length: float
    marker_length: float | None = None
    marker_bits: int = 4
    dict_size: int = 50

    def __post_init__(self) -> None:
        if self.kind not in BOARD_KINDS:
            raise ValueError(f"Board kind must be one of {BOARD_KINDS}, got {self.kind!r}.")
        for name in ("squares_x", "squares_y"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 3:
                raise ValueError(f"Board {name} must be an int >= 3, got {value!r}.")
        if not self.square_length > 0:
            raise ValueError(f"Board square_length must be > 0, got {self.square_length!r}.")
        if self.kind == "charuco":
            if self.marker_length is None or not 0 < self.marker_length < self.square_length:
                raise ValueError("A ChArUco board needs 0 < marker_length < square_length, got "
                                 f"{self.marker_length!r}.")
            if self.marker_bits not in (4, 5, 6, 7) or self.dict_size not in _ARUCO_SIZES:
                raise ValueError(f"No ArUco dictionary {self.marker_bits}x{self.marker_bits}_"
                                 f"{self.dict_size}; bits 4-7, sizes {_ARUCO_SIZES}.")

    @classmethod
    def from_toml(cls, path: str | Path) -> Board:
        """Read an anipose ``board.toml`` (ChArUco when it names ``marker_length``)."""
        from .io.anipose import read_toml

        data = read_toml(path)
        try:
            kind = "charuco" if "marker_length" in data else "checkerboard"
            return cls(kind=kind, squares_x=int(data["board_x"]), squares_y=int(data["board_y"]),
                       square_length=float(data["square_length"]),
                       marker_length=float(data["marker_length"]) if kind == "charuco" else None,
                       marker_bits=int(data.get("marker_bits", 4)),
                       dict_size=int(data.get("dict_size", 50)))
        except KeyError as missing:
            raise ValueError(f"{path} lacks {missing}; an anipose board file names board_x, "
                             "board_y, square_length (and marker_length for ChArUco).") from None

    def object_points(self) -> np.ndarray:
        """(n, 3) positions of the inner corners on the board plane (z = 0), indexed by corner id."""
        nx, ny = self.squares_x - 1, self.squares_y - 1
        grid = np.stack(np.meshgrid(np.arange(nx), np.arange(ny)), -1).reshape(-1, 2)
        xyz = np.zeros((len(grid), 3), np.float64)
        xyz[:, :2] = (grid + 1) * self.square_length
        return xyz

    def _charuco(self) -> Any:
        dictionary = cv2.aruco.getPredefinedDictionary(
            getattr(cv2.aruco, f"DICT_{self.marker_bits}X{self.marker_bits}_{self.dict_size}"))
        return cv2.aruco.CharucoBoard((self.squares_x, self.squares_y), self.square_length,
                                      self.marker_length, dictionary)

    def detector(self) -> BoardDetector:
        """A reusable detector for this board."""
        return BoardDetector(self)


class BoardDetector:
    """Finds a board's inner corners in images: ``detect(image) -> (ids, corners)``."""

    def __init__(self, board: Board) -> None:
        self.board = board
        if board.kind == "charuco":
            self._cv_board = board._charuco()
            self._detector = cv2.aruco.CharucoDetector(self._cv_board)
            # OpenCV numbers ChArUco corners row by row like object_points; check once.
            corners = np.asarray(self._cv_board.getChessboardCorners())
            ours = board.object_points()
            if corners.shape != ours.shape:
                raise ValueError(f"OpenCV's board has {len(corners)} corners, expected {len(ours)}.")
            self._corner_points = corners.astype(np.float64)

    @property
    def object_points(self) -> np.ndarray:
        if self.board.kind == "charuco":
            return self._corner_points
        return self.board.object_points()

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Corner ids (n,) and sub-pixel image positions (n, 2); empty when the board is not seen."""
        gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        empty = (np.zeros(0, np.int64), np.zeros((0, 2), np.float64))
        if self.board.kind == "charuco":
            corners, ids, _, _ = self._detector.detectBoard(gray)
            if ids is None or len(ids) == 0:
                return empty
            return ids.reshape(-1).astype(np.int64), corners.reshape(-1, 2).astype(np.float64)
        pattern = (self.board.squares_x - 1, self.board.squares_y - 1)
        found, corners = cv2.findChessboardCorners(
            gray, pattern, cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE)
        if not found:
            return empty
        corners = cv2.cornerSubPix(gray, corners, (5, 5), (-1, -1),
                                   (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 30, 0.01))
        return np.arange(len(corners), dtype=np.int64), corners.reshape(-1, 2).astype(np.float64)


# --- cameras --------------------------------------------------------------------------------


@dataclass
class Camera:
    """One camera: pinhole intrinsics, OpenCV distortion and pose (world -> camera).

    ``x_camera = R(rotation) @ x_world + translation``; ``rotation`` is a Rodrigues vector.
    """

    name: str
    size: tuple[int, int]                       # width, height in pixels
    matrix: np.ndarray                          # (3, 3)
    distortion: np.ndarray                      # (5,) k1 k2 p1 p2 k3
    rotation: np.ndarray = field(default_factory=lambda: np.zeros(3))
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def __post_init__(self) -> None:
        self.matrix = np.asarray(self.matrix, np.float64).reshape(3, 3)
        dist = np.zeros(5)
        given = np.asarray(self.distortion, np.float64).reshape(-1)
        if len(given) > 5:
            raise ValueError(f"Camera {self.name}: at most 5 distortion coefficients (k1 k2 p1 p2 "
                             f"k3), got {len(given)}.")
        dist[:len(given)] = given
        self.distortion = dist
        self.rotation = np.asarray(self.rotation, np.float64).reshape(3)
        self.translation = np.asarray(self.translation, np.float64).reshape(3)
        self.size = (int(self.size[0]), int(self.size[1]))
        values = np.concatenate([self.matrix.ravel(), dist, self.rotation, self.translation])
        if not np.all(np.isfinite(values)):
            raise ValueError(f"Camera {self.name}: its parameters hold NaN or infinity.")

    @property
    def rotation_matrix(self) -> np.ndarray:
        return cv2.Rodrigues(self.rotation)[0]

    @property
    def extrinsics(self) -> np.ndarray:
        """(3, 4) ``[R | t]``."""
        return np.hstack([self.rotation_matrix, self.translation[:, None]])

    @property
    def center(self) -> np.ndarray:
        """Position of the camera in world coordinates."""
        return -self.rotation_matrix.T @ self.translation

    def project(self, points: np.ndarray) -> np.ndarray:
        """Pixel positions (..., 2) of world points (..., 3); NaN in, NaN out."""
        points = np.asarray(points, np.float64)
        flat = points.reshape(-1, 3)
        out = np.full((len(flat), 2), np.nan)
        ok = np.all(np.isfinite(flat), axis=1)
        if ok.any():
            projected, _ = cv2.projectPoints(flat[ok], self.rotation, self.translation,
                                             self.matrix, self.distortion)
            out[ok] = projected.reshape(-1, 2)
        return out.reshape(points.shape[:-1] + (2,))

    def undistort(self, points: np.ndarray) -> np.ndarray:
        """Normalised image coordinates (..., 2) of pixel positions (..., 2), distortion removed."""
        points = np.asarray(points, np.float64)
        flat = points.reshape(-1, 2)
        out = np.full_like(flat, np.nan)
        ok = np.all(np.isfinite(flat), axis=1)
        if ok.any():
            out[ok] = cv2.undistortPoints(flat[ok].reshape(-1, 1, 2), self.matrix,
                                          self.distortion).reshape(-1, 2)
        return out.reshape(points.shape)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready parameters."""
        return {"name": self.name, "size": list(self.size), "matrix": self.matrix.tolist(),
                "distortion": self.distortion.tolist(), "rotation": self.rotation.tolist(),
                "translation": self.translation.tolist()}


def relative_centers(cameras: Sequence[Camera], reference: int = 0) -> np.ndarray:
    """Camera centres (n, 3) in the frame of camera ``reference``: comparable across
    calibrations whose world frames differ."""
    ref = cameras[reference]
    return np.array([ref.rotation_matrix @ c.center + ref.translation for c in cameras])


# --- calibration ----------------------------------------------------------------------------

Detections = Mapping[str, Mapping[Any, tuple[np.ndarray, np.ndarray]]]


@dataclass
class CalibrationResult:
    """Calibrated cameras and how well the board is reprojected.

    Attributes
    ----------
    cameras : list of Camera
        In the order given; the world frame is the first camera's.
    errors : dict
        Camera name -> mean reprojection error (px) of its board corners after refinement.
    views : dict
        Camera name -> number of board views used.
    shared_views : int
        Board views seen by two or more cameras (they tie the cameras together).
    initial_errors : dict
        Camera name -> error before bundle adjustment (each camera alone, calibrateCamera).
    """

    cameras: list[Camera]
    errors: dict[str, float]
    views: dict[str, int]
    shared_views: int
    initial_errors: dict[str, float]


def detect_in_images(paths: Iterable[str | Path], board: Board,
                     view_id: str = "index") -> tuple[dict, tuple[int, int]]:
    """Board corners in image files.

    ``view_id="index"`` keys each view by the last number in the file name (anipose and most
    rigs name simultaneous images ``cam-<time>-<n>.jpg``), so views of different cameras match;
    ``"name"`` keys by the file name. Returns ``({view: (ids, corners)}, (width, height))``.
    """
    detector = board.detector()
    views: dict[Any, tuple[np.ndarray, np.ndarray]] = {}
    size: tuple[int, int] | None = None
    for path in sorted(Path(p) for p in paths):
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise ValueError(f"Cannot read {path} as an image; check the file.")
        if size is None:
            size = (image.shape[1], image.shape[0])
        elif size != (image.shape[1], image.shape[0]):
            raise ValueError(f"{path} is {image.shape[1]}x{image.shape[0]}, the other images of "
                             f"this camera {size[0]}x{size[1]}: one camera's images must share a size.")
        if view_id == "index":
            numbers = re.findall(r"\d+", path.stem)
            if not numbers:
                raise ValueError(f"{path.name} has no number to match views by; use view_id='name'.")
            key: Any = int(numbers[-1])
        else:
            key = path.name
        if key in views:
            raise ValueError(f"Two images of one camera have view number {key} ({path.name}).")
        ids, corners = detector.detect(image)
        views[key] = (ids, corners)
    if size is None:
        raise ValueError("No board images given.")
    return views, size


def detect_in_video(path: str | Path, board: Board, step: int = 10) -> tuple[dict, tuple[int, int]]:
    """Board corners in every ``step``-th frame of a video, keyed by frame index."""
    from .engine.video import iter_frames

    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"step must be a positive int, got {step!r}.")
    detector = board.detector()
    views, size = {}, None
    for index, frame in enumerate(iter_frames(path)):
        size = (frame.shape[1], frame.shape[0])
        if index % step == 0:
            views[index] = detector.detect(frame)
    if size is None:
        raise ValueError(f"{path} has no frames.")
    return views, size


def _view_arrays(views: Mapping, object_points: np.ndarray):
    kept, obj, img = [], [], []
    for key, (ids, corners) in views.items():
        if len(ids) >= MIN_CORNERS:
            kept.append(key)
            obj.append(object_points[ids].astype(np.float32))
            img.append(corners.astype(np.float32))
    return kept, obj, img


def _pose_matrix(rvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = cv2.Rodrigues(np.asarray(rvec, np.float64).reshape(3))[0]
    out[:3, 3] = np.asarray(tvec, np.float64).reshape(3)
    return out


def _pose_vectors(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return cv2.Rodrigues(matrix[:3, :3])[0].reshape(3), matrix[:3, 3].copy()


def calibrate(detections: Detections, sizes: Mapping[str, tuple[int, int]], board: Board,
              *, refine: bool = True, max_views: int = 200) -> CalibrationResult:
    """Calibrate cameras from board detections.

    Parameters
    ----------
    detections : mapping
        Camera name -> {view id -> (corner ids, corners (n, 2))}; views with the same id were
        taken at the same instant by different cameras (e.g. from :func:`detect_in_images`).
    sizes : mapping
        Camera name -> (width, height).
    board : Board
    refine : bool
        Refine all cameras jointly by bundle adjustment (also with two cameras).
    max_views : int
        Views per camera used for its intrinsics (evenly spaced), to bound the time.

    Raises
    ------
    ValueError
        A camera with fewer than ``MIN_VIEWS`` usable views, or a camera that shares no view
        with the others (its position cannot be known).
    """
    names = list(detections)
    if not names:
        raise ValueError("No cameras to calibrate.")
    object_points = board.detector().object_points
    cameras: dict[str, Camera] = {}
    board_poses: dict[str, dict[Any, np.ndarray]] = {}
    initial: dict[str, float] = {}
    for name in names:
        kept, obj, img = _view_arrays(detections[name], object_points)
        if len(kept) < MIN_VIEWS:
            raise ValueError(
                f"Camera {name!r}: the board was found in {len(kept)} views (with >= {MIN_CORNERS} "
                f"corners), {MIN_VIEWS} are needed. Record more views of the board at varied "
                "angles, or check the board description (size, dictionary).")
        if len(kept) > max_views:
            pick = np.linspace(0, len(kept) - 1, max_views).round().astype(int)
            kept, obj, img = [kept[i] for i in pick], [obj[i] for i in pick], [img[i] for i in pick]
        width, height = sizes[name]
        rms, matrix, dist, rvecs, tvecs = cv2.calibrateCamera(
            obj, img, (int(width), int(height)), None, None, flags=cv2.CALIB_FIX_K3)
        cameras[name] = Camera(name, (width, height), matrix, dist.reshape(-1)[:5])
        board_poses[name] = {k: _pose_matrix(r, t) for k, r, t in zip(kept, rvecs, tvecs, strict=True)}
        initial[name] = float(np.mean([
            np.linalg.norm(cv2.projectPoints(o, r, t, matrix, dist)[0].reshape(-1, 2) - i, axis=1).mean()
            for o, i, r, t in zip(obj, img, rvecs, tvecs, strict=True)]))

    # Chain camera poses from the reference through shared views (breadth first, taking the
    # pair with most shared views first); each relative pose is the median over those views.
    world_from = {names[0]: np.eye(4)}   # camera -> (camera <- world) transform
    while len(world_from) < len(names):
        best = None
        for done in world_from:
            for other in names:
                if other in world_from:
                    continue
                shared = sorted(set(board_poses[done]) & set(board_poses[other]), key=str)
                if shared and (best is None or len(shared) > len(best[2])):
                    best = (done, other, shared)
        if best is None:
            missing = [n for n in names if n not in world_from]
            raise ValueError(f"Cameras {missing} share no board view with {sorted(world_from)}: "
                             "their positions cannot be found. Record the board where they and "
                             "another camera see it at the same time.")
        done, other, shared = best
        relative = [board_poses[other][v] @ np.linalg.inv(board_poses[done][v]) for v in shared]
        rvecs = np.array([_pose_vectors(m)[0] for m in relative])
        tvecs = np.array([_pose_vectors(m)[1] for m in relative])
        median = _pose_matrix(np.median(rvecs, axis=0), np.median(tvecs, axis=0))
        world_from[other] = median @ world_from[done]
    for name in names:
        cameras[name].rotation, cameras[name].translation = _pose_vectors(world_from[name])

    # Board pose per view in world coordinates, from the camera that saw most corners.
    all_views = sorted({v for n in names for v in board_poses[n]}, key=str)
    view_pose = {}
    for view in all_views:
        seen = [n for n in names if view in board_poses[n]]
        best = max(seen, key=lambda n: len(detections[n][view][0]))
        view_pose[view] = np.linalg.inv(world_from[best]) @ board_poses[best][view]
    shared_views = sum(1 for v in all_views if sum(v in board_poses[n] for n in names) >= 2)

    observations = [(n, v) for n in names for v in board_poses[n]]
    if refine:
        _bundle_adjust(cameras, names, view_pose, observations, detections, object_points)
    errors = {n: float(np.mean(np.concatenate([
        _residuals_one(cameras[n], view_pose[v], detections[n][v], object_points)
        for (m, v) in observations if m == n]))) for n in names}
    views = {n: len(board_poses[n]) for n in names}
    return CalibrationResult([cameras[n] for n in names], errors, views, shared_views, initial)


def _residuals_one(camera: Camera, pose: np.ndarray, detection, object_points) -> np.ndarray:
    ids, corners = detection
    world = (pose[:3, :3] @ object_points[ids].T).T + pose[:3, 3]
    return np.linalg.norm(camera.project(world) - corners, axis=1)


# Parameters per camera in the adjustment: rvec, tvec, fx, fy, cx, cy, k1, k2, p1, p2.
_CAMERA_PARAMS = 14


def _bundle_adjust(cameras: dict[str, Camera], names: list[str], view_pose: dict,
                   observations: list, detections: Detections, object_points: np.ndarray) -> None:
    from scipy.optimize import least_squares
    from scipy.sparse import lil_matrix

    views = list(view_pose)
    view_index = {v: i for i, v in enumerate(views)}
    cam_index = {n: i for i, n in enumerate(names)}
    n_cam = len(names) * _CAMERA_PARAMS

    def pack() -> np.ndarray:
        parts = []
        for n in names:
            c = cameras[n]
            k = c.matrix
            parts.append(np.concatenate([c.rotation, c.translation,
                                         [k[0, 0], k[1, 1], k[0, 2], k[1, 2]], c.distortion[:4]]))
        for v in views:
            parts.append(np.concatenate(_pose_vectors(view_pose[v])))
        return np.concatenate(parts)

    def unpack_camera(x: np.ndarray, i: int):
        p = x[i * _CAMERA_PARAMS:(i + 1) * _CAMERA_PARAMS]
        matrix = np.array([[p[6], 0, p[8]], [0, p[7], p[9]], [0, 0, 1]])
        dist = np.array([p[10], p[11], p[12], p[13], 0.0])
        return p[:3], p[3:6], matrix, dist

    obs = [(cam_index[n], view_index[v], *detections[n][v]) for n, v in observations]
    sizes = [2 * len(ids) for _, _, ids, _ in obs]
    offsets = np.concatenate([[0], np.cumsum(sizes)])

    def residuals(x: np.ndarray) -> np.ndarray:
        out = np.empty(offsets[-1])
        for (ci, vi, ids, corners), start, end in zip(obs, offsets[:-1], offsets[1:], strict=True):
            rvec, tvec, matrix, dist = unpack_camera(x, ci)
            vp = x[n_cam + 6 * vi:n_cam + 6 * vi + 6]
            pose = _pose_matrix(vp[:3], vp[3:])
            world = (pose[:3, :3] @ object_points[ids].T).T + pose[:3, 3]
            projected, _ = cv2.projectPoints(world, rvec, tvec, matrix, dist)
            out[start:end] = (projected.reshape(-1, 2) - corners).ravel()
        return out

    x0 = pack()
    sparsity = lil_matrix((offsets[-1], len(x0)), dtype=np.int8)
    for (ci, vi, _, _), start, end in zip(obs, offsets[:-1], offsets[1:], strict=True):
        sparsity[start:end, ci * _CAMERA_PARAMS:(ci + 1) * _CAMERA_PARAMS] = 1
        sparsity[start:end, n_cam + 6 * vi:n_cam + 6 * vi + 6] = 1
    # The reference camera's pose defines the world frame: keep it fixed (zero columns).
    sparsity[:, 0:6] = 0
    result = least_squares(residuals, x0, jac_sparsity=sparsity, x_scale="jac", loss="huber",
                           f_scale=2.0, max_nfev=200, method="trf")
    x = result.x
    x[:6] = x0[:6]
    for n in names:
        rvec, tvec, matrix, dist = unpack_camera(x, cam_index[n])
        cameras[n].rotation, cameras[n].translation = rvec.copy(), tvec.copy()
        cameras[n].matrix, cameras[n].distortion = matrix, dist
    for v in views:
        vp = x[n_cam + 6 * view_index[v]:n_cam + 6 * view_index[v] + 6]
        view_pose[v] = _pose_matrix(vp[:3], vp[3:])
