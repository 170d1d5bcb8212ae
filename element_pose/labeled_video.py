"""Draw pose estimates on video frames and write labeled videos (OpenCV, no database)."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from element_pose.engine.video import VideoError, iter_frames, probe_video

logger = logging.getLogger(__name__)

__all__ = ["bodypart_colors", "draw_pose", "write_labeled_video"]

#: opacity of points drawn below the cut-off when ``hide_below_cutoff=False``
FADE_ALPHA = 0.35


def bodypart_colors(bodyparts: Sequence[str] | int, colormap: str = "jet") -> list[tuple[int, int, int]]:
    """One RGB colour per body part, sampled evenly from a matplotlib colormap.

    The colour depends only on the body part's index and the number of body parts, so the
    same body part has the same colour in every frame, video and figure.

    Parameters
    ----------
    bodyparts : sequence of str, or int
        Body part names (or just their number).
    colormap : str, default "jet"
        Any matplotlib colormap name.

    Returns
    -------
    list of (int, int, int)
        RGB values in 0..255.
    """
    import matplotlib

    n = bodyparts if isinstance(bodyparts, int) else len(bodyparts)
    try:
        cmap = matplotlib.colormaps[colormap]
    except KeyError:
        raise ValueError(
            f"colormap={colormap!r} is not a matplotlib colormap; use e.g. 'jet', 'viridis', 'tab10'."
        ) from None
    positions = np.linspace(0.0, 1.0, n) if n > 1 else np.array([0.0])
    return [tuple(int(round(255 * c)) for c in cmap(float(p))[:3]) for p in positions]


def animal_colors(n: int) -> list[tuple[int, int, int]]:
    """One RGB colour per animal: tab10's distinct colours in order (blue, orange, green,
    ...), then evenly from "hsv" for more than ten animals."""
    import matplotlib

    if n <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return [tuple(int(round(255 * c)) for c in cmap(i)[:3]) for i in range(n)]
    return bodypart_colors(n, "hsv")


def _default_radius(height: int, width: int) -> int:
    return max(2, int(round(max(height, width) / 160)))


def _skeleton_indices(skeleton: Sequence[tuple], bodyparts: Sequence[str] | None, n_parts: int
                      ) -> list[tuple[int, int]]:
    index = {name: i for i, name in enumerate(bodyparts)} if bodyparts is not None else {}
    pairs: list[tuple[int, int]] = []
    for edge in skeleton:
        if len(edge) != 2:
            raise ValueError(f"skeleton edge {edge!r} must be a pair of body parts.")
        ends = []
        for end in edge:
            if isinstance(end, str):
                if end not in index:
                    raise ValueError(
                        f"skeleton edge {edge!r} names {end!r}, which is not a body part "
                        f"({list(bodyparts) if bodyparts is not None else 'pass bodyparts='})."
                    )
                ends.append(index[end])
            elif isinstance(end, (int, np.integer)) and 0 <= int(end) < n_parts:
                ends.append(int(end))
            else:
                raise ValueError(f"skeleton edge {edge!r}: {end!r} is neither a body part name nor an index < {n_parts}.")
        pairs.append((ends[0], ends[1]))
    return pairs


def draw_pose(
    frame_rgb: np.ndarray,
    pose_frame: np.ndarray,
    colors: Sequence[tuple[int, int, int]],
    *,
    pcutoff: float | None = 0.6,
    skeleton: Sequence[tuple[str, str] | tuple[int, int]] = (),
    bodyparts: Sequence[str] | None = None,
    dot_radius: int | None = None,
    hide_below_cutoff: bool = True,
    skeleton_color: tuple[int, int, int] = (255, 255, 255),
    line_thickness: int | None = None,
) -> np.ndarray:
    """Draw one frame's pose on a copy of an RGB image.

    Parameters
    ----------
    frame_rgb : np.ndarray
        uint8 image (H, W, 3) RGB, or (H, W) grayscale (converted to RGB).
    pose_frame : np.ndarray
        (K, 3) ``[x, y, likelihood]`` or (K, 2) ``[x, y]``; NaN x/y are not drawn. A NaN
        likelihood counts as "no confidence available" and the point is drawn.
    colors : sequence of (r, g, b)
        One colour per body part, e.g. from :func:`bodypart_colors`.
    pcutoff : float or None, default 0.6
        Points with likelihood below it are hidden (or faded); ``None`` draws all.
    skeleton : sequence of pairs
        Edges as body part names (needs ``bodyparts``) or indices; drawn under the dots when
        both ends are shown.
    bodyparts : sequence of str, optional
        Names for ``skeleton`` given by name.
    dot_radius : int, optional
        Default: about 1/160 of the larger image side, at least 2 px.
    hide_below_cutoff : bool, default True
        False draws low-likelihood points semi-transparent (opacity ``FADE_ALPHA``) instead.
    skeleton_color : (r, g, b), default white
    line_thickness : int, optional
        Skeleton line width; default half the dot radius (at least 1).

    Returns
    -------
    np.ndarray
        A new uint8 RGB image (H, W, 3).
    """
    image = np.asarray(frame_rgb)
    if image.dtype != np.uint8:
        raise ValueError(f"frame_rgb must be a uint8 image, got dtype {image.dtype}.")
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    elif image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"frame_rgb must have shape (H, W, 3) or (H, W), got {image.shape}.")
    else:
        image = np.ascontiguousarray(image).copy()
    pose_frame = np.asarray(pose_frame, dtype=np.float64)
    if pose_frame.ndim != 2 or pose_frame.shape[1] not in (2, 3):
        raise ValueError(f"pose_frame must have shape (K, 3) [x, y, likelihood] or (K, 2), got {pose_frame.shape}.")
    n_parts = pose_frame.shape[0]
    if len(colors) < n_parts:
        raise ValueError(f"colors has {len(colors)} entries for {n_parts} body parts; pass one colour per body part.")
    height, width = image.shape[:2]
    radius = int(dot_radius) if dot_radius is not None else _default_radius(height, width)
    if radius < 1:
        raise ValueError(f"dot_radius must be >= 1 pixel, got {dot_radius}.")
    thickness = line_thickness if line_thickness is not None else max(1, radius // 2)

    xy = pose_frame[:, :2]
    visible = ~np.isnan(xy).any(axis=1) & (np.abs(np.nan_to_num(xy)) < 1e6).all(axis=1)
    if pose_frame.shape[1] == 3 and pcutoff is not None:
        likelihood = pose_frame[:, 2]
        confident = np.isnan(likelihood) | (likelihood >= pcutoff)
    else:
        confident = np.ones(n_parts, dtype=bool)
    solid = visible & confident
    faded = visible & ~confident & (not hide_below_cutoff)
    centers = np.zeros((n_parts, 2), dtype=np.int64)
    centers[visible] = np.round(xy[visible]).astype(np.int64)
    edges = _skeleton_indices(skeleton, bodyparts, n_parts) if skeleton else []

    def draw(target: np.ndarray, shown: np.ndarray) -> None:
        for a, b in edges:
            if shown[a] and shown[b]:
                cv2.line(target, tuple(map(int, centers[a])), tuple(map(int, centers[b])),
                         tuple(int(c) for c in skeleton_color), thickness, cv2.LINE_AA)
        for k in np.flatnonzero(shown):
            cv2.circle(target, tuple(map(int, centers[k])), radius,
                       tuple(int(c) for c in colors[k]), -1, cv2.LINE_AA)

    if faded.any():
        overlay = image.copy()
        draw(overlay, faded | solid)
        image = cv2.addWeighted(overlay, FADE_ALPHA, image, 1.0 - FADE_ALPHA, 0.0)
    draw(image, solid)
    return image


def _h264_writer(path: Path, width: int, height: int, fps: float):
    """A started imageio-ffmpeg generator taking RGB uint8 frames, writing browser-playable
    H.264 MP4 (yuv420p needs even sizes: odd ones are padded, never resized)."""
    import imageio_ffmpeg

    writer = imageio_ffmpeg.write_frames(
        str(path), (width, height), fps=fps, codec="libx264", pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p", macro_block_size=1, quality=None,
        output_params=["-crf", "18", "-preset", "veryfast", "-movflags", "+faststart",
                       "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"],
        ffmpeg_log_level="error")
    try:
        writer.send(None)  # start ffmpeg
    except Exception as error:
        raise VideoError(f"Cannot start ffmpeg to write {path} (H.264, {width}x{height}, "
                         f"{fps} fps): {error}") from error
    return writer


def write_labeled_video(
    video_paths: Sequence[str | Path] | str | Path,
    pose: np.ndarray,
    bodyparts: Sequence[str],
    out_path: str | Path,
    pcutoff: float | None = 0.6,
    skeleton: Sequence[tuple[str, str]] = (),
    colormap: str = "jet",
    dot_radius: int | None = None,
    hide_below_cutoff: bool = True,
    progress: bool = True,
) -> Path:
    """Write a video with the pose drawn on every frame.

    Parameters
    ----------
    video_paths : path or sequence of paths
        The recording; several files are decoded one after the other, as one recording.
    pose : np.ndarray
        (F, K, 3) ``[x, y, likelihood]`` for the F decoded frames of the recording, or
        (F, I, K, 3) for several animals: each animal (track) is drawn in its own colour.
    bodyparts : sequence of str
        K body part names (colour by index, see :func:`bodypart_colors`).
    out_path : str or Path
        Output ``.mp4``: H.264 (libx264, yuv420p, ``+faststart``) that browsers play, written
        by the ffmpeg that imageio-ffmpeg ships (odd frame sizes are padded by one pixel). Written to a temporary file in the same folder, then
        renamed, so a failed run leaves nothing behind; an existing file is replaced.
    pcutoff, skeleton, dot_radius, hide_below_cutoff
        See :func:`draw_pose`.
    colormap : str, default "jet"
        matplotlib colormap for the body part colours.
    progress : bool, default True
        Show a tqdm progress bar.

    Returns
    -------
    Path
        ``out_path``.

    Raises
    ------
    ValueError
        If ``pose`` is not (F, K, 3) with K = len(bodyparts), the pose frame count differs from
        the recording's decoded frame count, the files differ in frame size, or ``out_path``
        is not an .mp4. Checked before anything is written.
    VideoError
        If a video is missing or unreadable.
    """
    paths = [Path(video_paths)] if isinstance(video_paths, (str, Path)) else [Path(p) for p in video_paths]
    if not paths:
        raise ValueError("video_paths is empty; pass the recording's video file(s).")
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".mp4":
        raise ValueError(f"out_path={str(out_path)!r} must end in .mp4 (H.264 is written to MP4).")
    pose = np.asarray(pose, dtype=np.float64)
    bodyparts = list(bodyparts)
    if pose.ndim not in (3, 4) or pose.shape[-1] != 3:
        raise ValueError(f"pose must have shape (frames, body parts, 3) = [x, y, likelihood], or "
                         f"(frames, animals, body parts, 3); got {pose.shape}.")
    if pose.shape[-2] != len(bodyparts):
        raise ValueError(f"pose has {pose.shape[-2]} body parts but bodyparts names {len(bodyparts)}: {bodyparts}.")
    if pose.ndim == 3:
        colors = bodypart_colors(bodyparts, colormap)
    else:  # one colour per animal, for its parts and its skeleton
        colors_per_animal = animal_colors(pose.shape[1])
    edges = _skeleton_indices(skeleton, bodyparts, len(bodyparts))

    infos = [probe_video(p, progress=progress) for p in paths]
    sizes = {(i.width, i.height) for i in infos}
    if len(sizes) > 1:
        raise ValueError(
            "The video files differ in frame size "
            + ", ".join(f"{i.path.name}: {i.width}x{i.height}" for i in infos)
            + "; a recording's files must share one size."
        )
    n_frames = sum(i.frame_count for i in infos)
    if pose.shape[0] != n_frames:
        raise ValueError(
            f"pose has {pose.shape[0]} frames but the video decodes to {n_frames} frames "
            f"({', '.join(f'{i.path.name}: {i.frame_count}' for i in infos)}); pass the pose "
            "estimated on this recording."
        )
    width, height = infos[0].width, infos[0].height
    fps = infos[0].fps

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = out_path.with_name(f".{out_path.stem}.{uuid.uuid4().hex[:12]}.partial.mp4")
    writer = None
    try:
        writer = _h264_writer(tmp_path, width, height, fps)
        bar = tqdm(total=n_frames, desc=f"label {out_path.name}", unit="frame", disable=not progress)
        index = 0
        for path in paths:
            for frame in iter_frames(path):
                if index >= n_frames:
                    raise VideoError(f"{path} decoded more frames than when it was probed; the file changed.")
                if pose.ndim == 3:
                    labeled = draw_pose(frame, pose[index], colors, pcutoff=pcutoff,
                                        skeleton=edges, dot_radius=dot_radius,
                                        hide_below_cutoff=hide_below_cutoff)
                else:
                    labeled = frame
                    for i, color in enumerate(colors_per_animal):
                        labeled = draw_pose(labeled, pose[index, i], [color] * len(bodyparts),
                                            pcutoff=pcutoff, skeleton=edges,
                                            dot_radius=dot_radius, skeleton_color=color,
                                            hide_below_cutoff=hide_below_cutoff)
                writer.send(np.ascontiguousarray(labeled))
                index += 1
                bar.update(1)
        bar.close()
        if index != n_frames:
            raise VideoError(f"Decoded {index} frames while writing, {n_frames} when probing; the input changed.")
        writer.close()
        writer = None
        os.replace(tmp_path, out_path)
    except BaseException:
        if writer is not None:
            try:
                writer.close()
            except Exception:  # ffmpeg may already be gone; the partial file goes anyway
                pass
        tmp_path.unlink(missing_ok=True)
        raise
    logger.info("Wrote labeled video %s (%d frames, %dx%d, %.3g fps).", out_path, n_frames, width, height, fps)
    return out_path
