"""Pose output files of other tools, read with their provenance (database-free).

DeepLabCut ``.h5``/``.csv`` (single and multi-animal), SLEAP predictions (``.slp`` with predicted
instances, ``.analysis.h5``) through sleap-io. Each reader returns an :class:`ExternalPose`:
the (frames, body parts, 3) array, or (frames, individuals, body parts, 3) for several
animals, and who made it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class ExternalPose:
    """Pose from another tool's output file.

    Attributes
    ----------
    pose : np.ndarray
        (F, K, 3) x, y, likelihood (score); NaN where nothing was found. Several animals:
        (F, I, K, 3), one slice per entry of ``individuals``.
    bodyparts : list of str
    tool : str
        ``"DeepLabCut"`` or ``"SLEAP"``.
    scorer : str
        The tool's name for the model (DeepLabCut's scorer; SLEAP's model or file name).
    version : str
        The tool's version when the file records it, else ``""``.
    individuals : list of str
        Names of the animals of a multi-animal output (DeepLabCut's individuals, SLEAP's
        tracks, or ``instance0``, ... for untracked SLEAP instances); empty for one animal.
    """

    pose: np.ndarray
    bodyparts: list[str]
    tool: str
    scorer: str
    version: str = ""
    individuals: list[str] = field(default_factory=list)


def read_pose_output(path: str | Path, frame_count: int | None = None) -> ExternalPose:
    """Read a pose output file of DeepLabCut or SLEAP.

    ``frame_count`` (the recording's frames) sizes SLEAP outputs, which list only frames with
    predictions; frames without any are NaN.

    Raises
    ------
    FileNotFoundError, ValueError
        A missing file, an unknown format, no predictions.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Pose output not found: {path}. Check the path.")
    name = path.name.lower()
    if name.endswith((".slp", ".analysis.h5")):
        return _read_sleap(path, frame_count)
    if name.endswith((".h5", ".csv")):
        from .dlc import read_dlc_multi_output, read_dlc_output, read_dlc_table

        if read_dlc_table(path).columns.nlevels == 4:
            pose, individuals, parts, scorer = read_dlc_multi_output(read_dlc_table(path), path)
            return ExternalPose(pose, parts, "DeepLabCut", scorer, individuals=individuals)
        pose, parts, scorer = read_dlc_output(path)
        return ExternalPose(pose, parts, "DeepLabCut", scorer)
    raise ValueError(f"{path}: unknown pose output format; give a DeepLabCut .h5/.csv or a SLEAP "
                     ".slp/.analysis.h5 file.")


def _read_sleap(path: Path, frame_count: int | None) -> ExternalPose:
    import sleap_io as sio

    try:
        labels = sio.load_file(str(path))
    except Exception as error:  # sleap-io raises many kinds for a bad file
        raise ValueError(f"Cannot read {path} as SLEAP predictions: {error}") from error
    if len(labels.skeletons) != 1:
        raise ValueError(f"{path} has {len(labels.skeletons)} skeletons; one is needed.")
    if len(labels.videos) != 1:
        raise ValueError(f"{path} holds predictions for {len(labels.videos)} videos; load one "
                         "recording's file.")
    parts = list(labels.skeletons[0].node_names)
    frames = [lf for lf in labels.labeled_frames if lf.predicted_instances]
    if not frames:
        raise ValueError(f"{path} has no predicted instances: it is a labels file. Import it with "
                         "LabeledDataset.import_sleap instead.")
    n = frame_count if frame_count is not None else max(lf.frame_idx for lf in frames) + 1
    if max(lf.frame_idx for lf in frames) >= n:
        raise ValueError(f"{path} has predictions up to frame {max(lf.frame_idx for lf in frames)} "
                         f"but the recording has {n} frames; it belongs to another video.")
    tracks = [t.name for t in labels.tracks]
    most = max(len(lf.predicted_instances) for lf in frames)
    individuals: list[str] = []
    if len(tracks) > 1 or most > 1:
        # Tracked instances by track name; untracked ones by their order in the frame.
        untracked = max(sum(i.track is None for i in lf.predicted_instances) for lf in frames)
        individuals = tracks + [f"instance{j}" for j in range(untracked)]
        pose = np.full((n, len(individuals), len(parts), 3), np.nan)
        for lf in frames:
            j = 0
            for inst in lf.predicted_instances:
                if inst.track is not None:
                    slot = tracks.index(inst.track.name)
                else:
                    slot, j = len(tracks) + j, j + 1
                pose[lf.frame_idx, slot] = inst.numpy(scores=True)
    else:
        pose = np.full((n, len(parts), 3), np.nan)
        for lf in frames:
            pose[lf.frame_idx] = lf.predicted_instances[0].numpy(scores=True)
    provenance = dict(labels.provenance or {})
    version = str(provenance.get("sleap_version", provenance.get("version", "")) or "")
    scorer = str(provenance.get("model_paths", "") or provenance.get("model", "") or path.stem)
    return ExternalPose(pose, parts, "SLEAP", scorer[:96], version[:32], individuals)
