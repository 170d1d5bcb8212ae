"""Read SLEAP labels (``.slp``) into :class:`~element_pose.io.labels.LabeledData` with sleap-io.

Only the labels are read; pixels stay in the source video and are decoded on demand by
:meth:`FrameSource.read`. Videos are resolved on disk at read time (see :func:`read_sleap`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from element_pose.io.labels import FrameSource, LabeledData

logger = logging.getLogger(__name__)

__all__ = ["read_sleap", "write_sleap"]


def _resolve_media(stored: str, slp_dir: Path, video_root: Path | None) -> Path:
    """Find a video/image file that a .slp refers to.

    Tried in order: ``video_root / stored`` and ``video_root / basename`` (when ``video_root``
    is given), the stored path as is when absolute, ``slp_dir / stored``, ``slp_dir / basename``.
    The first existing file wins; when none exists the stored path (made absolute against the
    .slp folder) is returned and a warning is logged, so labels stay readable without videos.
    """
    stored_path = Path(stored.replace("\\", "/"))
    basename = Path(stored_path.name)
    candidates: list[Path] = []
    if video_root is not None:
        if not stored_path.is_absolute():
            candidates.append(video_root / stored_path)
        candidates.append(video_root / basename)
    if stored_path.is_absolute():
        candidates.append(stored_path)
    else:
        candidates.append(slp_dir / stored_path)
    candidates.append(slp_dir / basename)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    fallback = stored_path if stored_path.is_absolute() else (slp_dir / stored_path)
    logger.warning(
        "Media file %r referenced by the SLEAP labels was not found (tried %s); frames from it "
        "cannot be read until it is restored or video_root points to its folder.",
        stored, ", ".join(str(c) for c in candidates),
    )
    return fallback.absolute()


def _select(items: list[Any], frames: slice | Sequence[int] | None) -> list[Any]:
    if frames is None:
        return items
    if isinstance(frames, slice):
        return items[frames]
    if isinstance(frames, (str, bytes)) or not isinstance(frames, Sequence | np.ndarray):
        raise ValueError(f"frames must be a slice, a sequence of integers or None, got {frames!r}.")
    indices = np.asarray(frames)
    if indices.size and not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"frames must hold integers (positions of labeled frames), got dtype {indices.dtype}.")
    out_of_range = [int(i) for i in indices.ravel() if not -len(items) <= i < len(items)]
    if out_of_range:
        raise ValueError(
            f"frames {out_of_range[:10]} are out of range: the file has {len(items)} labeled frames "
            f"(positions 0 to {len(items) - 1})."
        )
    if len(set(indices.tolist())) != indices.size:
        raise ValueError("frames contains duplicate positions; pass each labeled frame once.")
    return [items[int(i)] for i in indices]


def read_sleap(
    path: str | Path,
    video_root: str | Path | None = None,
    frames: slice | Sequence[int] | None = None,
    include_predicted: bool = False,
) -> LabeledData:
    """Read a SLEAP labels file into :class:`LabeledData`.

    Parameters
    ----------
    path : str or Path
        A ``.slp`` file.
    video_root : str or Path, optional
        Folder to look for the videos in first (see "Video paths" below).
    frames : slice or sequence of int, optional
        Import only these labeled frames: positions in the list of labeled frames sorted by
        (video, frame index). For a single, fully labeled video this is the frame index.
        ``None`` imports all.
    include_predicted : bool, default False
        By default only user-labeled (human) instances are read and frames without one are
        skipped. With True, a frame's predicted instances are used where it has no user
        instance of the same track (untracked predictions only in frames without user
        instances).

    Returns
    -------
    LabeledData
        ``bodyparts`` = skeleton node names, ``individuals`` = track names in the file's order
        followed by ``"animal0"``, ``"animal1"``, ... for untracked instances (numbered by their
        order within each frame), ``skeleton`` = node-name edges, ``keypoints`` of shape
        (frames, individuals, bodyparts, 2) with NaN where a point or an individual is missing.
        Frames are named ``"<video file name>/<frame index:06d>"`` (prefixed with
        ``"video<i>/"`` when two videos share a file name).

    Notes
    -----
    Video paths: a .slp stores the path a video had when it was labeled. Each is looked up
    under ``video_root`` (as stored, then by file name), then as stored (absolute paths),
    then relative to the .slp's folder (as stored, then by file name). Videos are not opened.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file has several different skeletons, or ``frames`` is invalid.
    """
    import sleap_io

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SLEAP labels file not found: {path}.")
    root = Path(video_root) if video_root is not None else None
    if root is not None and not root.is_dir():
        raise ValueError(f"video_root={str(root)!r} is not a folder; pass the folder that holds the videos.")
    labels = sleap_io.load_slp(str(path), open_videos=False)

    if not labels.skeletons:
        raise ValueError(f"{path} has no skeleton, so it defines no body parts.")
    node_lists = {tuple(s.node_names) for s in labels.skeletons}
    if len(node_lists) > 1:
        raise ValueError(
            f"{path} has {len(labels.skeletons)} skeletons with different nodes {sorted(node_lists)}; "
            "element-pose labeled data has one body-part list. Split the file per skeleton in SLEAP."
        )
    skeleton = labels.skeletons[0]
    bodyparts = list(skeleton.node_names)
    edges = [(e.source.name, e.destination.name) for e in skeleton.edges]

    slp_dir = path.parent.absolute()
    video_index = {id(v): i for i, v in enumerate(labels.videos)}
    video_names: list[str] = []
    media: list[Path | list[Path]] = []
    for video in labels.videos:
        source = video
        if video.source_video is not None and Path(str(video.filename)).name == path.name:
            source = video.source_video  # embedded images (.pkg.slp): point at the original video
        filename = source.filename
        if isinstance(filename, (list, tuple)):  # image sequence
            media.append([_resolve_media(str(f), slp_dir, root) for f in filename])
            video_names.append(Path(str(filename[0])).parent.name or "images")
        else:
            if Path(str(filename)).resolve() == path.resolve():
                raise ValueError(
                    f"{path} embeds its images and does not reference the source video; export the "
                    "labels with the video path (SLEAP: save without embedded images)."
                )
            media.append(_resolve_media(str(filename), slp_dir, root))
            video_names.append(Path(str(filename).replace("\\", "/")).name)
    if len(set(video_names)) != len(video_names):
        video_names = [f"video{i}/{name}" for i, name in enumerate(video_names)]

    # labeled frames with at least one usable instance, in (video, frame) order
    entries: list[tuple[int, int, list[Any]]] = []
    for lf in labels.labeled_frames:
        user = list(lf.user_instances)
        chosen = user
        if include_predicted:
            user_tracks = {id(inst.track) for inst in user if inst.track is not None}
            predicted = [
                inst for inst in lf.predicted_instances
                if (inst.track is not None and id(inst.track) not in user_tracks)
                or (inst.track is None and not user)
            ]
            chosen = user + predicted
        chosen = [inst for inst in chosen if not np.all(np.isnan(inst.numpy()))]
        if chosen:
            entries.append((video_index[id(lf.video)], int(lf.frame_idx), chosen))
    entries.sort(key=lambda e: (e[0], e[1]))
    keys = [(v, f) for v, f, _ in entries]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{path} lists the same video frame twice; merge the duplicate labeled frames in SLEAP.")
    entries = _select(entries, frames)

    track_names = [t.name for t in labels.tracks]
    if len(set(track_names)) != len(track_names):
        raise ValueError(f"{path} has duplicate track names {track_names}; rename the tracks in SLEAP.")
    n_untracked = max((sum(inst.track is None for inst in inst_list) for _, _, inst_list in entries),
                      default=0)
    untracked_names: list[str] = []
    counter = 0
    while len(untracked_names) < n_untracked:
        name = f"animal{counter}"
        if name not in track_names:
            untracked_names.append(name)
        counter += 1
    individuals = track_names + untracked_names
    if not individuals:
        individuals = ["animal0"]
    track_slot = {id(t): i for i, t in enumerate(labels.tracks)}

    keypoints = np.full((len(entries), len(individuals), len(bodyparts), 2), np.nan)
    frame_sources: list[FrameSource] = []
    for row, (vi, frame_idx, inst_list) in enumerate(entries):
        untracked_seen = 0
        for inst in inst_list:
            if inst.track is not None:
                slot = track_slot[id(inst.track)]
                if not np.all(np.isnan(keypoints[row, slot])):
                    raise ValueError(
                        f"{path}: frame {frame_idx} of {video_names[vi]} has two instances of "
                        f"track {inst.track.name!r}; one individual can appear once per frame. "
                        "Give the second instance its own track in SLEAP.")
            else:
                slot = len(track_names) + untracked_seen
                untracked_seen += 1
            keypoints[row, slot] = np.asarray(inst.numpy(), dtype=np.float64)[:, :2]
        name = f"{video_names[vi]}/{frame_idx:06d}"
        source = media[vi]
        if isinstance(source, list):
            if not 0 <= frame_idx < len(source):
                raise ValueError(f"{path}: frame index {frame_idx} is beyond the {len(source)} images of {video_names[vi]}.")
            frame_sources.append(FrameSource(name=name, image_path=source[frame_idx],
                                             source_video=video_names[vi]))
        else:
            frame_sources.append(FrameSource(name=name, video_path=source, frame_index=frame_idx,
                                             source_video=video_names[vi]))

    logger.info("Read %d labeled frames, %d individuals, %d body parts from %s.",
                len(frame_sources), len(individuals), len(bodyparts), path)
    return LabeledData(
        bodyparts=bodyparts,
        individuals=individuals,
        frames=frame_sources,
        keypoints=keypoints,
        scorer="",
        skeleton=edges,
        source=str(path.absolute()),
    )


def write_sleap(path: str | Path, data: LabeledData, images: Sequence[bytes],
                predicted: np.ndarray | None = None) -> tuple[Path, list[str]]:
    """Write labeled frames as a SLEAP labels file that SLEAP and sleap-io open.

    The images go to ``<path stem>.images/<nn>_<video>/<nnnnnn>.<png|jpg>`` (one image-sequence
    video per source video, bytes as given) and the ``.slp`` refers to them.

    Parameters
    ----------
    path : str or Path
        The ``.slp`` file to write (must not exist).
    data : LabeledData
        Its labels become user instances, one per individual with a labeled point; tracks are
        named after the individuals when there are several.
    images : sequence of bytes
        Encoded image of each frame, in ``data.frames`` order.
    predicted : np.ndarray, optional
        (frames, individuals, bodyparts, 3) x, y, score: a model's suggestions, written as
        predicted instances (which the labeler accepts or corrects in SLEAP) where an
        individual has no user label. Frames with neither are listed as suggestions.

    Returns
    -------
    path : Path
    names : list of str
        The name :func:`read_sleap` gives each frame of ``data`` when the file is read back.
    """
    import sleap_io as sio

    path = Path(path)
    if path.suffix != ".slp":
        raise ValueError(f"A SLEAP labels file must end in .slp, got {path.name}.")
    if path.exists():
        raise FileExistsError(f"{path} exists; export into a new file so no labels are overwritten.")
    if len(images) != len(data):
        raise ValueError(f"{len(images)} images for {len(data)} frames.")
    if predicted is not None and predicted.shape != (*data.keypoints.shape[:3], 3):
        raise ValueError(f"predicted has shape {predicted.shape}, expected {(*data.keypoints.shape[:3], 3)}.")
    skeleton = sio.Skeleton(nodes=list(data.bodyparts), edges=[list(e) for e in data.skeleton],
                            name="element-pose")
    multi = len(data.individuals) > 1
    tracks = [sio.Track(name=name) for name in data.individuals] if multi else []
    folder = path.with_name(path.stem + ".images")
    groups: dict[str, list[int]] = {}
    for i, frame in enumerate(data.frames):
        groups.setdefault(frame.source_video or "frames", []).append(i)
    frames, videos, suggestions = [], [], []
    names = [""] * len(data)
    for v, (video_name, members) in enumerate(groups.items()):
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in video_name)
        sub = folder / f"{v:02d}_{safe}"
        sub.mkdir(parents=True, exist_ok=False)
        files = []
        for k, i in enumerate(members):
            ext = ".jpg" if images[i][:2] == b"\xff\xd8" else ".png"
            target = sub / f"{k:06d}{ext}"
            target.write_bytes(images[i])
            files.append(str(target.absolute()))
            names[i] = f"{sub.name}/{k:06d}"
        video = sio.Video.from_filename(files)
        videos.append(video)
        for k, i in enumerate(members):
            instances = []
            for j in range(len(data.individuals)):
                track = tracks[j] if multi else None
                points = data.keypoints[i, j]
                if not np.isnan(points).all():
                    instances.append(sio.Instance.from_numpy(points, skeleton, track=track))
                elif predicted is not None and not np.isnan(predicted[i, j, :, :2]).all():
                    guess = predicted[i, j]
                    instances.append(sio.PredictedInstance.from_numpy(
                        guess[:, :2], skeleton, point_scores=np.nan_to_num(guess[:, 2]),
                        score=float(np.nanmean(guess[:, 2])), track=track))
            if instances:
                frames.append(sio.LabeledFrame(video=video, frame_idx=k, instances=instances))
            else:
                suggestions.append(sio.SuggestionFrame(video=video, frame_idx=k))
    labels = sio.Labels(labeled_frames=frames, videos=videos, skeletons=[skeleton], tracks=tracks,
                        suggestions=suggestions)
    path.parent.mkdir(parents=True, exist_ok=True)
    sio.save_slp(labels, str(path), embed=False, verbose=False)
    return path, names
