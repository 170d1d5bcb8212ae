"""A synthetic but realistic sample: a mouse-like animal walking over a textured arena,
rendered to a video with ground-truth keypoints, and a DeepLabCut project of labeled frames.

Used by the demo and the tests so that neither downloads anything.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml

BODYPARTS = ["snout", "leftear", "rightear", "tailbase"]
SKELETON = [("snout", "leftear"), ("snout", "rightear"), ("leftear", "tailbase"), ("rightear", "tailbase")]


@dataclass
class Sample:
    """Paths and ground truth of a generated sample."""

    video_path: Path
    project_dir: Path
    keypoints: np.ndarray  # (frames, bodyparts, 2) ground truth for every video frame
    labeled_frames: list[int]
    fps: float
    intrusion_frames: list[int] = field(default_factory=list)

    @property
    def bodyparts(self) -> list[str]:
        return list(BODYPARTS)


def _arena(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A textured floor: smooth noise, a faint grid and a darker wall band (BGR uint8)."""
    noise = rng.normal(0, 1, (height // 8 + 1, width // 8 + 1)).astype(np.float32)
    noise = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    fine = cv2.GaussianBlur(rng.normal(0, 1, (height, width)).astype(np.float32), (0, 0), 1.2)
    floor = 170 + 18 * noise + 8 * fine
    floor[:, ::24] -= 25
    floor[::24, :] -= 25
    wall = max(4, min(width, height) // 20)
    floor[:wall], floor[-wall:], floor[:, :wall], floor[:, -wall:] = 90, 90, 90, 90
    floor = np.clip(floor, 0, 255).astype(np.uint8)
    tint = np.stack([floor, (floor * 0.97).astype(np.uint8), (floor * 0.92).astype(np.uint8)], axis=-1)
    return tint


def _path(n: int, width: int, height: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random walk of the body centre, kept inside the arena; returns centres and headings."""
    margin = 0.2 * min(width, height)
    pos = np.array([width / 2, height / 2], dtype=float)
    heading = rng.uniform(0, 2 * np.pi)
    speed = 0.012 * min(width, height)
    centres, headings = [], []
    for _ in range(n):
        heading += rng.normal(0, 0.12)
        nxt = pos + speed * np.array([np.cos(heading), np.sin(heading)])
        if not (margin < nxt[0] < width - margin and margin < nxt[1] < height - margin):
            # turn towards the centre when near a wall
            to_centre = np.array([width / 2, height / 2]) - pos
            heading = np.arctan2(to_centre[1], to_centre[0]) + rng.normal(0, 0.3)
            nxt = pos + speed * np.array([np.cos(heading), np.sin(heading)])
        pos = nxt
        centres.append(pos.copy())
        headings.append(heading)
    return np.asarray(centres), np.asarray(headings)


def render_frame(background: np.ndarray, centre: np.ndarray, heading: float, scale: float,
                 rng: np.random.Generator, shade: tuple[int, int, int] = (60, 58, 55)
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Draw the animal (body colour ``shade``, BGR) on a copy of ``background``; return (BGR
    frame, keypoints (4, 2))."""
    frame = background.copy()
    fwd = np.array([np.cos(heading), np.sin(heading)])
    side = np.array([-fwd[1], fwd[0]])
    body_len, body_w = 1.0 * scale, 0.45 * scale
    head = centre + fwd * 0.55 * scale
    snout = centre + fwd * 0.95 * scale
    ears = [head + side * 0.2 * scale - fwd * 0.05 * scale, head - side * 0.2 * scale - fwd * 0.05 * scale]
    tailbase = centre - fwd * 0.55 * scale
    tail_tip = tailbase - fwd * 0.9 * scale + side * 0.25 * scale * np.sin(heading * 3)
    angle = np.degrees(heading)
    shift = 4  # sub-pixel drawing precision (1/16 px)

    def pt(p: np.ndarray) -> tuple[int, int]:
        return int(round(p[0] * (1 << shift))), int(round(p[1] * (1 << shift)))

    def axes(a: float, b: float) -> tuple[int, int]:
        return int(a * (1 << shift)), int(b * (1 << shift))

    shadow = frame.copy()
    cv2.ellipse(shadow, pt(centre + np.array([2, 3])), axes(body_len * 0.6, body_w * 0.6), angle, 0, 360,
                (40, 40, 40), -1, cv2.LINE_AA, shift)
    frame = cv2.addWeighted(shadow, 0.35, frame, 0.65, 0)
    cv2.line(frame, pt(tailbase), pt(tail_tip), (120, 110, 150), max(1, int(scale * 0.07)), cv2.LINE_AA, shift)
    cv2.ellipse(frame, pt(centre), axes(body_len * 0.6, body_w * 0.5), angle, 0, 360, shade, -1, cv2.LINE_AA, shift)
    cv2.ellipse(frame, pt(head + fwd * 0.1 * scale), axes(0.38 * scale, 0.22 * scale), angle, 0, 360,
                tuple(min(255, c + 10) for c in shade), -1, cv2.LINE_AA, shift)
    for ear in ears:
        cv2.circle(frame, pt(ear), int(0.11 * scale * (1 << shift)), (150, 140, 190), -1, cv2.LINE_AA, shift)
    cv2.circle(frame, pt(snout), int(0.05 * scale * (1 << shift)), (170, 160, 220), -1, cv2.LINE_AA, shift)
    noise = rng.normal(0, 3, frame.shape)
    frame = np.clip(frame.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    keypoints = np.stack([snout, ears[0], ears[1], tailbase])
    return frame, keypoints


def _intrusion(frame: np.ndarray, centre: np.ndarray, heading: float, scale: float, phase: float
               ) -> np.ndarray:
    """Draw a pale, hand-like object over the animal's head (an experimenter's glove reaching
    in): its fingertips have the ears' colour and size and it hides part of the head, so a
    model that never saw one puts head parts on it."""
    fwd = np.array([np.cos(heading), np.sin(heading)])
    side = np.array([-fwd[1], fwd[0]])
    palm = centre + fwd * 0.75 * scale + side * 0.35 * scale * np.sin(phase)
    angle = np.degrees(heading + 0.6 * np.sin(phase))
    cv2.ellipse(frame, tuple(int(v) for v in palm.round()), (int(0.3 * scale), int(0.2 * scale)), angle,
                0, 360, (185, 180, 215), -1, cv2.LINE_AA)
    for k in (-1, 0, 1):
        tip = palm - fwd * 0.35 * scale + side * k * 0.2 * scale
        cv2.circle(frame, tuple(int(v) for v in tip.round()), max(2, int(0.11 * scale)), (150, 140, 190), -1,
                   cv2.LINE_AA)
    return frame


def make_sample(out_dir: str | Path, n_frames: int = 300, n_labeled: int = 60, width: int = 320,
                height: int = 240, fps: float = 30.0, seed: int = 0, scorer: str = "synthetic",
                video_name: str = "arena_cam", intrusions: int = 0) -> Sample:
    """Render a video and a DeepLabCut project labeling ``n_labeled`` evenly spaced frames.

    Parameters
    ----------
    out_dir : str or Path
        Folder to write into (``<video_name>.mp4`` and ``dlc-project/``).
    intrusions : int, default 0
        Number of short episodes (6 frames each, spread over the video) in which a hand-like
        blob of the ears' colour appears next to the animal: rare frames a model trained on
        the other frames gets wrong (the refinement loop's test case). The labeled frames
        avoid them.

    Returns
    -------
    Sample
    """
    if n_labeled > n_frames:
        raise ValueError(f"n_labeled ({n_labeled}) cannot exceed n_frames ({n_frames}).")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    background = _arena(width, height, rng)
    centres, headings = _path(n_frames, width, height, rng)
    scale = 0.16 * min(width, height)
    video_path = out_dir / f"{video_name}.mp4"
    writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot write {video_path}.")
    truth = np.zeros((n_frames, len(BODYPARTS), 2))
    hand = set()
    for start in np.linspace(0, n_frames, intrusions + 2)[1:-1].round().astype(int):
        hand.update(range(int(start) - 3, int(start) + 3))
    candidates = np.array([i for i in range(n_frames) if i not in hand])
    positions = np.linspace(0, len(candidates) - 1, n_labeled).round().astype(int)
    labeled = sorted(set(candidates[positions].tolist()))
    project = out_dir / "dlc-project"
    frames_dir = project / "labeled-data" / video_name
    frames_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n_frames):
        frame, keypoints = render_frame(background, centres[i], headings[i], scale, rng)
        if i in hand:
            frame = _intrusion(frame, centres[i], headings[i], scale, 0.7 * i)
        truth[i] = keypoints
        writer.write(frame)
        if i in labeled:
            cv2.imwrite(str(frames_dir / f"img{i:04d}.png"), frame)
    writer.release()

    with (frames_dir / f"CollectedData_{scorer}.csv").open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["scorer"] + [scorer] * 2 * len(BODYPARTS))
        out.writerow(["bodyparts"] + [b for b in BODYPARTS for _ in (0, 1)])
        out.writerow(["coords"] + ["x", "y"] * len(BODYPARTS))
        for i in labeled:
            out.writerow([f"labeled-data/{video_name}/img{i:04d}.png"]
                         + [f"{v:.3f}" for v in truth[i].ravel()])
    config = {
        "Task": "arena", "scorer": scorer, "date": "synthetic", "multianimalproject": False,
        "project_path": str(project), "video_sets": {str(video_path): {"crop": f"0, {width}, 0, {height}"}},
        "bodyparts": BODYPARTS, "skeleton": [list(e) for e in SKELETON], "pcutoff": 0.6,
    }
    (project / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return Sample(video_path=video_path, project_dir=project, keypoints=truth, labeled_frames=labeled,
                  fps=fps, intrusion_frames=sorted(hand))


#: The two animals of :func:`make_pair_sample`: name, body colour (BGR), size factor.
PAIR = (("dark", (60, 58, 55), 1.0), ("brown", (40, 90, 160), 0.85))


@dataclass
class PairSample:
    """Paths and ground truth of a generated two-animal sample."""

    video_path: Path
    project_dir: Path
    keypoints: np.ndarray  # (frames, 2, bodyparts, 2) ground truth for every video frame
    labeled_frames: list[int]
    individuals: list[str]


def make_pair_sample(out_dir: str | Path, n_frames: int = 200, n_labeled: int = 60,
                     width: int = 320, height: int = 240, fps: float = 30.0, seed: int = 0,
                     scorer: str = "synthetic") -> PairSample:
    """Two animals, one dark and one brown (visually distinct, named ``dark`` / ``brown``),
    walking over the arena and crossing each other: a video and a DeepLabCut multi-animal
    project labeling ``n_labeled`` evenly spaced frames."""
    from .io.dlc import label_frame_name, write_dlc_project
    from .io.labels import FrameSource, LabeledData

    if n_labeled > n_frames:
        raise ValueError(f"n_labeled ({n_labeled}) cannot exceed n_frames ({n_frames}).")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    background = _arena(width, height, rng)
    paths = [_path(n_frames, width, height, rng) for _ in PAIR]
    video_path = out_dir / "pair_cam.mp4"
    writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot write {video_path}.")
    truth = np.zeros((n_frames, len(PAIR), len(BODYPARTS), 2))
    labeled = sorted(set(np.linspace(0, n_frames - 1, n_labeled).round().astype(int).tolist()))
    names, images = [], []
    for i in range(n_frames):
        frame = background
        for a, (_, shade, size) in enumerate(PAIR):
            centres, headings = paths[a]
            frame, truth[i, a] = render_frame(frame, centres[i], headings[i],
                                              0.14 * size * min(width, height), rng, shade)
        writer.write(frame)
        if i in labeled:
            payload = cv2.imencode(".png", frame)[1].tobytes()
            names.append(label_frame_name(f"img{i:04d}.png", "pair_cam", i, payload))
            images.append(payload)
    writer.release()
    individuals = [name for name, _, _ in PAIR]
    data = LabeledData(bodyparts=list(BODYPARTS), individuals=individuals,
                       frames=[FrameSource(name=n) for n in names],
                       keypoints=truth[labeled].copy(), scorer=scorer,
                       skeleton=list(SKELETON))
    project = write_dlc_project(out_dir / "dlc-project", data, images, task="pair",
                                extra_config={"video_sets": {str(video_path): {
                                    "crop": f"0, {width}, 0, {height}"}}})
    return PairSample(video_path=video_path, project_dir=project, keypoints=truth,
                      labeled_frames=labeled, individuals=individuals)


# --- a synthetic camera rig (3D) ------------------------------------------------------------


def make_rig(n_cameras: int = 3, width: int = 320, height: int = 240, distance: float = 700.0,
             focal: float = 450.0):
    """Cameras on a ring above the origin (about 45 degrees up), all looking at it (for 3D
    tests and the demo); world y points down.

    Returns a list of :class:`element_pose.calibration.Camera` named ``cam0``, ``cam1``, ...;
    no distortion; lengths in mm.
    """
    from .calibration import Camera

    cameras = []
    for i in range(n_cameras):
        angle = 2 * np.pi * i / n_cameras
        ring = 0.7 * distance
        center = np.array([ring * np.sin(angle), -0.7 * distance, -ring * np.cos(angle)])
        forward = -center / np.linalg.norm(center)
        right = np.cross([0.0, 1.0, 0.0], forward)
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        rotation = np.stack([right, down, forward])     # rows: camera axes in world coordinates
        rvec = cv2.Rodrigues(rotation)[0].reshape(3)
        matrix = [[focal, 0, width / 2 - 0.5], [0, focal, height / 2 - 0.5], [0, 0, 1]]
        cameras.append(Camera(f"cam{i}", (width, height), matrix, np.zeros(5), rvec,
                              -rotation @ center))
    return cameras


def render_board_views(out_dir: str | Path, board, cameras, n_views: int = 12, seed: int = 0,
                       pixels_per_square: int = 60) -> dict[str, Path]:
    """Images of a ChArUco/checkerboard board at random poses near the origin, seen by every
    camera at once: ``<out_dir>/<camera>/<camera>-<view>.png``. Views where the board faces
    away from a camera are written as blank frames (no detection), like a real recording.

    Returns camera name -> folder.
    """
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    nx, ny = board.squares_x, board.squares_y
    size = (nx * pixels_per_square, ny * pixels_per_square)
    if board.kind == "charuco":
        texture = board._charuco().generateImage(size, marginSize=0)
    else:
        texture = np.kron((np.indices((ny, nx)).sum(0) % 2 == 0).astype(np.uint8) * 255,
                          np.ones((pixels_per_square, pixels_per_square), np.uint8))
    # a white margin so the outer squares are found
    margin = pixels_per_square // 2
    texture = cv2.copyMakeBorder(texture, margin, margin, margin, margin, cv2.BORDER_CONSTANT, value=255)
    scale = board.square_length / pixels_per_square           # mm per texture pixel
    folders = {}
    for cam in cameras:
        folders[cam.name] = out_dir / cam.name
        folders[cam.name].mkdir(parents=True, exist_ok=True)
    mean_dir = np.mean([-c.center / np.linalg.norm(c.center) for c in cameras], axis=0)
    for view in range(n_views):
        # board tilted towards the cameras (its normal against their mean viewing direction)
        tilt = rng.normal(0, 0.25, 3)
        base = cv2.Rodrigues(np.array([np.pi / 2 + 0.6, 0.0, 0.0]))[0]
        if mean_dir[1] > 0:  # cameras look down: board lies flat, facing up
            base = cv2.Rodrigues(np.array([-np.pi / 2, 0.0, 0.0]))[0]
        rotation = cv2.Rodrigues(tilt)[0] @ base
        centre_offset = np.array([(nx * board.square_length) / 2, (ny * board.square_length) / 2, 0])
        translation = rng.normal(0, 25, 3) - rotation @ centre_offset
        # texture pixel (u, v) -> board point ((u - margin) * scale, (v - margin) * scale, 0)
        to_board = np.array([[scale, 0, -margin * scale], [0, scale, -margin * scale], [0, 0, 1]])
        for cam in cameras:
            r_cam = cam.rotation_matrix @ rotation
            t_cam = cam.rotation_matrix @ translation + cam.translation
            normal_towards = (r_cam @ np.array([0, 0, 1.0]))[2]
            homography = cam.matrix @ np.column_stack([r_cam[:, 0], r_cam[:, 1], t_cam]) @ to_board
            image = np.full((cam.size[1], cam.size[0]), 90, np.uint8)
            if abs(normal_towards) > 0.2:
                warped = cv2.warpPerspective(texture, homography, cam.size, flags=cv2.INTER_AREA,
                                             borderMode=cv2.BORDER_CONSTANT, borderValue=90)
                mask = cv2.warpPerspective(np.ones_like(texture), homography, cam.size) > 0
                image[mask] = warped[mask]
            image = cv2.GaussianBlur(image, (3, 3), 0.6)
            cv2.imwrite(str(folders[cam.name] / f"{cam.name}-{view}.png"), image)
    return folders
