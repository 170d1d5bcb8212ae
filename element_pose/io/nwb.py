"""Export pose estimates to NWB with ndx-pose, read them back, and hand files to DANDI.

Layout written by :func:`export_nwb` (ndx-pose >= 0.2)::

    /processing/behavior/
        Skeletons/<skeleton>            nodes = body parts, edges = index pairs (uint8)
        <PoseEstimation>                scorer, source_software (+ version), description
            <body part>                 PoseEstimationSeries: data (F, 2) px, confidence (F,),
                                        timestamps (F,) s (stored once, linked by the others)
    /acquisition/<video ImageSeries>    external video file(s), linked as the PoseEstimation's
                                        ``source_video`` (ndx-pose >= 0.3; older versions get
                                        ``original_videos`` / ``dimensions`` instead)

One animal: ``PoseEstimation`` + skeleton ``subject``. Several (pose of shape (F, I, K, 3)
with ``individuals``): ``PoseEstimation_<individual>`` + skeleton ``<individual>`` each.
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["export_nwb", "read_nwb_pose", "read_nwb_skeleton", "upload_to_dandi"]

REFERENCE_FRAME = (
    "(0, 0) is the top-left corner of the video frame; x increases to the right and y downwards, "
    "in pixels (centre of the top-left pixel at (0, 0))."
)


def _package_version() -> str:
    try:
        from element_pose import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover - partial installs
        return "unknown"


def _accepts(cls: type, argument: str) -> bool:
    from hdmf.utils import get_docval

    return any(d["name"] == argument for d in get_docval(cls.__init__))


def _video_dimensions(path: Path) -> tuple[int, int] | None:
    import cv2

    if not path.is_file():
        return None
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            return None
        return int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        capture.release()


def _starting_frames(paths: list[Path], n_frames: int, counts: Sequence[int] | None) -> list[int]:
    if len(paths) == 1:
        return [0]
    if counts is None:
        from element_pose.engine.video import probe_video

        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise ValueError(
                f"Cannot find video file(s) {missing} to count their frames; pass "
                "video_frame_counts=[frames of each file] for a recording split over several files."
            )
        counts = [probe_video(p).frame_count for p in paths]
    counts = [int(c) for c in counts]
    if len(counts) != len(paths) or sum(counts) != n_frames:
        raise ValueError(
            f"video_frame_counts {counts} must give one count per video file ({len(paths)}) and add up "
            f"to the pose's {n_frames} frames."
        )
    return np.concatenate(([0], np.cumsum(counts)[:-1])).astype(int).tolist()


def export_nwb(
    path: str | Path,
    pose: np.ndarray,
    bodyparts: Sequence[str],
    timestamps: np.ndarray,
    *,
    session_start_time: datetime,
    skeleton_edges: Sequence[tuple[str, str]] = (),
    individuals: Sequence[str] | None = None,
    subject_id: str | None = None,
    subject: Mapping[str, Any] | None = None,
    session_description: str = "Markerless pose estimation",
    identifier: str | None = None,
    source_software: str = "element-pose",
    source_software_version: str | None = None,
    model_name: str | None = None,
    scorer: str | None = None,
    description: str | None = None,
    confidence_definition: str = "Likelihood of the estimated position (0 to 1), from the network output.",
    video_paths: Sequence[str | Path] = (),
    video_frame_counts: Sequence[int] | None = None,
    dimensions: Sequence[tuple[int, int]] | None = None,
    original_videos: Sequence[str] | None = None,
    nwbfile_fields: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    unit: str = "pixels",
    reference_frame: str = REFERENCE_FRAME,
) -> Path:
    """Write pose estimates to a new NWB file (ndx-pose).

    Parameters
    ----------
    path : str or Path
        Target ``.nwb`` file. Written to a temporary file in the same folder and renamed, so a
        failure leaves no partial file.
    pose : np.ndarray
        (F, K, 3) ``[x, y, likelihood]`` in pixels, NaN where missing; or (F, I, K, 3) for
        several animals together with ``individuals``. 3D points: (F, K, 4) ``[x, y, z,
        score]`` with ``unit`` and ``reference_frame`` describing the world frame.
    bodyparts : sequence of str
        K body part names (series names; must be unique).
    timestamps : np.ndarray
        (F,) seconds relative to ``session_start_time``, non-decreasing.
    session_start_time : datetime
        Session start; a naive datetime is taken as local time.
    skeleton_edges : sequence of (str, str)
        Body part pairs connected in the skeleton.
    individuals : sequence of str, optional
        I animal names, required when ``pose`` is 4-D.
    subject_id : str, optional
        Creates an NWB ``Subject`` linked from the skeleton(s).
    subject : mapping, optional
        More ``pynwb.file.Subject`` fields (``species``, ``sex``, ``age``, ...), which DANDI needs.
    session_description, identifier
        NWB file fields; ``identifier`` defaults to a random UUID.
    source_software, source_software_version
        Software that produced the estimates; the version defaults to element-pose's.
    model_name, scorer
        ``scorer`` is stored as the PoseEstimation scorer (default ``model_name``); the model
        name is also written in the description.
    description : str, optional
        PoseEstimation description (default built from the model name).
    confidence_definition : str
        How the likelihood was computed.
    video_paths : sequence of path
        Source video file(s) in order. Stored as an external-file ImageSeries, with paths
        relative to the NWB file's folder where possible.
    video_frame_counts : sequence of int, optional
        Frames of each video file when there are several (default: counted by decoding).
    dimensions : sequence of (width, height), optional
        Frame size of each video (default: read from the files when present).
    original_videos : sequence of str, optional
        Strings to record for the videos instead of the computed relative paths (e.g. paths
        relative to a lab's video root).
    nwbfile_fields : mapping, optional
        More ``pynwb.NWBFile`` fields: ``experimenter``, ``lab``, ``institution``,
        ``experiment_description``, ``session_id``, ``keywords``, ...
    overwrite : bool, default False
        Replace an existing file.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.
    ValueError
        If the shapes of ``pose``, ``bodyparts``, ``timestamps`` or ``individuals`` disagree, a
        skeleton edge names an unknown body part, or the timestamps are not finite and
        non-decreasing.
    """
    from hdmf.backends.hdf5 import H5DataIO
    from ndx_pose import PoseEstimation, PoseEstimationSeries, Skeleton, Skeletons
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.file import Subject
    from pynwb.image import ImageSeries

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it, or choose another path.")
    pose = np.asarray(pose, dtype=np.float64)
    bodyparts = [str(b) for b in bodyparts]
    if len(set(bodyparts)) != len(bodyparts):
        raise ValueError(f"bodyparts has duplicate names {bodyparts}; each body part becomes a named series.")
    if pose.ndim == 3:
        if individuals is not None and len(individuals) != 1:
            raise ValueError(f"pose is 3-D (one animal) but individuals names {len(individuals)}: {list(individuals)}.")
        pose = pose[:, np.newaxis]
        names = list(individuals) if individuals is not None else [None]
    elif pose.ndim == 4:
        if individuals is None or len(individuals) != pose.shape[1]:
            raise ValueError(
                f"pose has shape {pose.shape} (frames, individuals, body parts, 3); pass individuals= with "
                f"{pose.shape[1]} names."
            )
        names = [str(i) for i in individuals]
        if len(set(names)) != len(names):
            raise ValueError(f"individuals has duplicate names {names}.")
    else:
        raise ValueError(f"pose must have shape (frames, body parts, 3) or (frames, individuals, body parts, 3), got {pose.shape}.")
    n_frames, _, n_parts, n_channels = pose.shape
    if n_channels not in (3, 4) or n_parts != len(bodyparts):
        raise ValueError(f"pose has {n_parts} body parts x {n_channels} channels; expected {len(bodyparts)} x 3 "
                         "(x, y, likelihood) or x 4 (x, y, z, score).")
    timestamps = np.asarray(timestamps, dtype=np.float64)
    if timestamps.shape != (n_frames,):
        raise ValueError(f"timestamps has shape {timestamps.shape}; expected ({n_frames},), one time in seconds per frame.")
    if not np.all(np.isfinite(timestamps)) or np.any(np.diff(timestamps) < 0):
        raise ValueError("timestamps must be finite and non-decreasing (seconds from the session start).")
    index = {name: i for i, name in enumerate(bodyparts)}
    edges = []
    for a, b in skeleton_edges:
        if a not in index or b not in index:
            raise ValueError(f"skeleton edge ({a!r}, {b!r}) names a body part not in {bodyparts}.")
        edges.append((index[a], index[b]))
    if edges and n_parts > 256:
        raise ValueError("ndx-pose stores skeleton edges as uint8: at most 256 body parts with edges.")
    edges_array = np.asarray(edges, dtype=np.uint8).reshape(-1, 2)
    if session_start_time.tzinfo is None:
        session_start_time = session_start_time.astimezone()
        logger.info("session_start_time has no time zone; taken as local time %s.", session_start_time)

    reserved = {"session_description", "identifier", "session_start_time", "subject"} & set(nwbfile_fields or {})
    if reserved:
        raise ValueError(f"nwbfile_fields must not set {sorted(reserved)}; pass them as export_nwb arguments.")
    subject_fields = dict(subject or {})
    if subject_id is not None:
        subject_fields["subject_id"] = str(subject_id)
    nwb_subject = Subject(**subject_fields) if subject_fields else None
    nwbfile = NWBFile(
        session_description=session_description,
        identifier=identifier or str(uuid.uuid4()),
        session_start_time=session_start_time,
        subject=nwb_subject,
        **dict(nwbfile_fields or {}),
    )
    behavior = nwbfile.create_processing_module(name="behavior", description="Pose estimation (ndx-pose).")

    video_kwargs: dict[str, Any] = {}
    videos = [Path(p) for p in video_paths]
    if original_videos is not None and len(original_videos) != len(videos):
        raise ValueError(f"original_videos has {len(original_videos)} entries for {len(videos)} video_paths.")
    if dimensions is not None and len(dimensions) != len(videos):
        raise ValueError(f"dimensions has {len(dimensions)} entries for {len(videos)} video_paths.")
    if videos:
        if original_videos is not None:
            recorded = [str(v) for v in original_videos]
        else:
            recorded = []
            for v in videos:
                try:
                    recorded.append(os.path.relpath(v.absolute(), path.parent.absolute()))
                except ValueError:  # another drive on Windows
                    recorded.append(str(v.absolute()))
        sizes = [tuple(int(x) for x in d) for d in dimensions] if dimensions is not None else [_video_dimensions(v) for v in videos]
        if _accepts(PoseEstimation, "source_video"):
            starting = _starting_frames(videos, n_frames, video_frame_counts)
            image_series_kwargs: dict[str, Any] = {}
            if sizes and all(s is not None for s in sizes) and len(set(sizes)) == 1:
                image_series_kwargs["dimension"] = list(sizes[0])
            source_video = ImageSeries(
                name="source_video", description="Video the pose was estimated from.",
                external_file=recorded, format="external", starting_frame=starting,
                timestamps=timestamps, **image_series_kwargs,
            )
            nwbfile.add_acquisition(source_video)
            video_kwargs["source_video"] = source_video
        else:  # ndx-pose 0.2
            video_kwargs["original_videos"] = recorded
            if all(s is not None for s in sizes):
                video_kwargs["dimensions"] = np.asarray(sizes, dtype=np.uint64)

    scorer_value = scorer if scorer is not None else model_name
    if description is None:
        description = "Estimated positions of body parts" + (f" by model {model_name}" if model_name else "") + "."
    version = source_software_version if source_software_version is not None else _package_version()

    skeleton_objects = []
    estimations = []
    first = None  # the one series that stores the timestamps; all others link to it
    for i, individual in enumerate(names):
        skeleton = Skeleton(
            name=individual or "subject", nodes=bodyparts,
            edges=edges_array if len(edges_array) else None,
            subject=nwb_subject if len(names) == 1 else None,
        )
        skeleton_objects.append(skeleton)
        series_list = []
        for k, name in enumerate(bodyparts):
            series = PoseEstimationSeries(
                name=name,
                description=f"Estimated position of {name}" + (f" of {individual}" if individual else "") + ".",
                data=H5DataIO(np.ascontiguousarray(pose[:, i, k, :-1]), compression="gzip"),
                unit=unit,
                reference_frame=reference_frame,
                timestamps=first if first is not None else H5DataIO(timestamps, compression="gzip"),
                confidence=H5DataIO(np.ascontiguousarray(pose[:, i, k, -1]), compression="gzip"),
                confidence_definition=confidence_definition,
            )
            if first is None:
                first = series
            series_list.append(series)
        estimations.append(PoseEstimation(
            name="PoseEstimation" if individual is None else f"PoseEstimation_{individual}",
            pose_estimation_series=series_list,
            description=description,
            scorer=scorer_value,
            source_software=source_software,
            source_software_version=version,
            skeleton=skeleton,
            **video_kwargs,
        ))
    behavior.add(Skeletons(skeletons=skeleton_objects))
    for estimation in estimations:
        behavior.add(estimation)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.partial.nwb")
    try:
        with NWBHDF5IO(str(tmp_path), mode="w") as io:
            io.write(nwbfile)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    logger.info("Wrote %d frames x %d body parts x %d individual(s) to %s.", n_frames, n_parts, len(names), path)
    return path


def _find_pose_estimation(nwbfile: Any, name: str | None, path: Path) -> Any:
    from ndx_pose import PoseEstimation

    found = {obj.name: obj for obj in nwbfile.objects.values() if isinstance(obj, PoseEstimation)}
    if not found:
        raise ValueError(f"{path} holds no ndx-pose PoseEstimation.")
    if name is None:
        if len(found) > 1:
            raise ValueError(f"{path} holds several PoseEstimation objects {sorted(found)}; pass name= to pick one.")
        return next(iter(found.values()))
    if name not in found:
        raise ValueError(f"{path} has no PoseEstimation named {name!r}; it has {sorted(found)}.")
    return found[name]


def _body_part_order(estimation: Any) -> list[str]:
    names = list(estimation.pose_estimation_series.keys())
    if estimation.skeleton is not None:
        nodes = [str(n) for n in estimation.skeleton.nodes[:]]
        if set(nodes) == set(names):
            return nodes
    return names


def read_nwb_pose(path: str | Path, name: str | None = None) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Read pose estimates from an NWB file (ndx-pose).

    Parameters
    ----------
    path : str or Path
        NWB file.
    name : str, optional
        PoseEstimation to read; needed only when the file holds several.

    Returns
    -------
    pose : np.ndarray
        (F, K, 3) ``[x, y, likelihood]`` (3D series: (F, K, 4) ``[x, y, z, score]``); the
        last channel is NaN when the file stores no confidence.
    bodyparts : list of str
        In skeleton node order (series order when there is no skeleton).
    timestamps : np.ndarray
        (F,) seconds from the session start.
    """
    from pynwb import NWBHDF5IO

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NWB file not found: {path}.")
    with NWBHDF5IO(str(path), mode="r") as io:
        nwbfile = io.read()
        estimation = _find_pose_estimation(nwbfile, name, path)
        bodyparts = _body_part_order(estimation)
        timestamps = None
        columns = []
        for part in bodyparts:
            series = estimation.pose_estimation_series[part]
            data = np.asarray(series.data[:], dtype=np.float64)
            if data.ndim != 2 or data.shape[1] < 2:
                raise ValueError(f"{path}: series {part!r} has data of shape {data.shape}, expected (F, 2).")
            if series.conversion not in (None, 1.0) or (series.offset or 0.0) != 0.0:
                data = data * series.conversion + (series.offset or 0.0)
            confidence = (np.asarray(series.confidence[:], dtype=np.float64) if series.confidence is not None
                          else np.full(len(data), np.nan))
            if series.timestamps is not None:
                stamps = np.asarray(series.timestamps[:], dtype=np.float64)
            else:
                stamps = (series.starting_time or 0.0) + np.arange(len(data)) / series.rate
            if timestamps is None:
                timestamps = stamps
            elif stamps.shape != timestamps.shape or not np.array_equal(stamps, timestamps):
                raise ValueError(f"{path}: series {part!r} has different timestamps from {bodyparts[0]!r}.")
            columns.append(np.column_stack([data, confidence]))
    pose = np.stack(columns, axis=1) if columns else np.empty((0, 0, 3))
    return pose, bodyparts, np.asarray(timestamps if timestamps is not None else [], dtype=np.float64)


def read_nwb_skeleton(path: str | Path, name: str | None = None) -> list[tuple[str, str]]:
    """Skeleton edges (body part name pairs) of a PoseEstimation in an NWB file."""
    from pynwb import NWBHDF5IO

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NWB file not found: {path}.")
    with NWBHDF5IO(str(path), mode="r") as io:
        estimation = _find_pose_estimation(io.read(), name, path)
        skeleton = estimation.skeleton
        if skeleton is None or skeleton.edges is None:
            return []
        nodes = [str(n) for n in skeleton.nodes[:]]
        return [(nodes[int(a)], nodes[int(b)]) for a, b in np.asarray(skeleton.edges[:])]


def upload_to_dandi(
    nwb_path: str | Path,
    dandiset_id: str,
    *,
    staging: bool = True,
    working_directory: str | Path | None = None,
    api_key: str | None = None,
    sync: bool = False,
    existing: str = "refresh",
) -> None:
    """Upload NWB file(s) to the DANDI Archive with element-interface's helper.

    Calls :func:`element_interface.dandi.upload_to_dandi`, which downloads the dandiset's
    ``dandiset.yaml`` into ``working_directory/<dandiset_id>``, runs ``dandi organize`` on the
    source folder, validates and uploads. Needs network access and a DANDI API key (argument or
    the ``DANDI_API_KEY`` environment variable).

    Parameters
    ----------
    nwb_path : str or Path
        An NWB file, or a folder of NWB files. A single file is organized from a private
        folder holding only a link to it, so other files beside it are not uploaded.
    dandiset_id : str
        Six-digit dandiset id, e.g. ``"000123"``.
    staging : bool, default True
        Use the staging server (``gui-staging.dandiarchive.org``); False uploads to production.
    working_directory : str or Path, optional
        Where the dandiset folder is created (default: the current directory).
    api_key, sync, existing
        Passed on (see ``dandi upload --help``).
    """
    nwb_path = Path(nwb_path)
    if not nwb_path.exists():
        raise FileNotFoundError(f"Nothing to upload: {nwb_path} does not exist.")
    dandiset_id = str(dandiset_id)
    if not (dandiset_id.isdigit() and len(dandiset_id) == 6):
        raise ValueError(f"dandiset_id={dandiset_id!r} must be the six-digit dandiset number, e.g. '000123'.")
    from element_interface.dandi import upload_to_dandi as _upload

    work = Path(working_directory) if working_directory is not None else Path.cwd()
    work.mkdir(parents=True, exist_ok=True)
    if nwb_path.is_dir():
        _upload(str(nwb_path), dandiset_id, staging=staging, working_directory=str(work),
                api_key=api_key, sync=sync, existing=existing)
        return
    with tempfile.TemporaryDirectory(prefix="element-pose-dandi-", dir=work) as source:
        (Path(source) / nwb_path.name).symlink_to(nwb_path.absolute())
        _upload(source, dandiset_id, staging=staging, working_directory=str(work),
                api_key=api_key, sync=sync, existing=existing)
