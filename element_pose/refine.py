"""Schema ``refine``: the refinement loop (pick frames, label, find mistakes, correct, retrain).

One iteration, every step a row::

    FrameSelection.select(...)            frames worth labeling (k-means + uniform), or
    OutlierScore.populate(); FrameSelection.from_outliers(...)   the model's likely mistakes
    LabelingRound.export(...)             to a DeepLabCut project or SLEAP file, pre-filled
        ... the lab labels / corrects them in DeepLabCut, napari-deeplabcut or SLEAP ...
    LabelingRound.merge(...)              a new LabeledDataset version + DatasetVersion lineage
    train.DataSplit.extend(...)           earlier test frames stay in the test set
    TrainingTask + model.TrainingInit     retrain (fine-tune the previous model)
    compare_models(...)                   the iterations side by side

Which frames were added, why (k-means, uniform, outlier signal) and what each retraining
bought are then queries. The scoring and selection algorithms live in
:mod:`element_pose.frame_selection` and :mod:`element_pose.outliers` (no database).
"""

from __future__ import annotations

import importlib
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import datajoint as dj
import numpy as np
import pandas as pd

from . import model, train
from .hashing import sha256_bytes
from .io.labels import FrameSource, LabeledData
from .jobs import RecoverJobs
from .names import check_name

logger = logging.getLogger(__name__)

schema = dj.Schema()

CONFLICT_RULES = ("error", "first", "mean")
EXPORT_FORMATS = ("dlc", "sleap")


def activate(schema_name: str, *, create_schema: bool = True, create_tables: bool = True,
             linking_module: Any = None) -> None:
    """Activate the ``refine`` schema (after ``train`` and ``model``)."""
    if isinstance(linking_module, str):
        linking_module = importlib.import_module(linking_module)
    schema.activate(schema_name, create_schema=create_schema, create_tables=create_tables,
                    add_objects=linking_module.__dict__ if linking_module else None)


def _recording_key(row: dict) -> dict:
    return {k: row[k] for k in model.RecordingInfo.primary_key}


def _video_paths(recording: dict) -> list[Path]:
    return model.VideoRecording.file_paths(recording)


def _read_frames(recording: dict, indices: Sequence[int]) -> dict[int, np.ndarray]:
    """RGB frames of a recording by index (decoded forward once)."""
    from .engine.video import iter_frames

    wanted = set(int(i) for i in indices)
    out: dict[int, np.ndarray] = {}
    offset = 0
    for path in _video_paths(recording):
        n = 0
        for frame in iter_frames(path):
            if offset + n in wanted:
                out[offset + n] = frame
            n += 1
            if len(out) == len(wanted):
                return out
        offset += n
    missing = sorted(wanted - set(out))
    if missing:
        raise ValueError(f"Frames {missing[:5]} are beyond the end of recording {recording}.")
    return out


# --- frames worth labeling ----------------------------------------------------------------


@schema
class FrameSelection(dj.Manual):
    """Frames picked for labeling, how and why: k-means / uniform over recordings, or outliers."""

    definition = """
    selection: varchar(64)
    ---
    method: varchar(16)               # kmeans | uniform | outliers
    selection_params: json            # the method's parameters
    selection_time=CURRENT_TIMESTAMP: datetime
    """

    class Frame(dj.Part):
        definition = """
        -> master
        -> model.RecordingInfo
        frame_index: int32            # 0-based, across the recording's files
        ---
        reason: varchar(16)           # kmeans | uniform | outlier
        score=null: float64           # outlier score (outliers only)
        """

    @classmethod
    def select(cls, name: str, recordings: dict | Sequence[dict], n_frames: int,
               method: str = "kmeans", uniform_fraction: float = 0.2, seed: int = 0,
               thumbnail_width: int = 30, exclude_dataset: dict | None = None) -> dict:
        """Pick ``n_frames`` frames to label over one or more recordings.

        ``"kmeans"`` clusters downsampled frames (as DeepLabCut does) and takes the frame
        nearest each cluster's centre, with ``uniform_fraction`` of the frames spread evenly
        in time; ``"uniform"`` spreads all of them. Frames are shared among recordings in
        proportion to their length. Frames of ``exclude_dataset`` (a labeled dataset, matched
        by source video name and frame index) are never picked.
        """
        from .frame_selection import METHODS, frame_features, pick_frames

        check_name(name, "selection name", 64)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
        if cls & {"selection": name}:
            raise ValueError(f"A frame selection named {name!r} exists; choose another name.")
        keys = [recordings] if isinstance(recordings, dict) else list(recordings)
        infos = []
        for key in keys:
            rows = (model.RecordingInfo & key).to_dicts()
            if len(rows) != 1:
                raise ValueError(f"{key} matches {len(rows)} populated recordings; give one each "
                                 "(run RecordingInfo.populate() first).")
            infos.append(rows[0])
        total = sum(r["frame_count"] for r in infos)
        labeled: set[tuple[str, int]] = set()
        if exclude_dataset is not None:
            labeled = {(r["source_video"], r["source_frame_index"])
                       for r in (train.LabeledDataset.Frame & exclude_dataset).to_dicts()}
        picks = []
        for k, info in enumerate(infos):
            share = n_frames - sum(len(p[1]) for p in picks) if k == len(infos) - 1 else \
                max(1, round(n_frames * info["frame_count"] / total))
            recording = _recording_key(info)
            paths = _video_paths(recording)
            video = paths[0].name if paths else ""
            indices, features = frame_features(paths, info["frame_count"], width=thumbnail_width)
            exclude = [i for v, i in labeled if v in (video, paths[0].stem)]
            picks.append((recording, pick_frames(indices, features, share, method,
                                                 uniform_fraction, seed, exclude)))
        key = {"selection": name}
        with cls.connection.transaction:
            cls.insert1({**key, "method": method, "selection_params": {
                "n_frames": n_frames, "uniform_fraction": uniform_fraction, "seed": seed,
                "thumbnail_width": thumbnail_width,
                "exclude_dataset": exclude_dataset["dataset"] if exclude_dataset else None}})
            cls.Frame.insert({**key, **recording, "frame_index": i, "reason": reason}
                             for recording, chosen in picks for i, reason in chosen)
        return key

    @classmethod
    def from_outliers(cls, name: str, outlier_key: dict) -> dict:
        """A selection of the frames an :class:`OutlierScore` picked (its ``Frame`` rows)."""
        check_name(name, "selection name", 64)
        rows = (OutlierScore.Frame & outlier_key).to_dicts(order_by="outlier_rank")
        if not rows:
            raise ValueError(f"No outlier frames for {outlier_key}; run OutlierScore.populate() first.")
        if cls & {"selection": name}:
            raise ValueError(f"A frame selection named {name!r} exists; choose another name.")
        task = {k: rows[0][k] for k in OutlierTask.primary_key}
        key = {"selection": name}
        with cls.connection.transaction:
            cls.insert1({**key, "method": "outliers", "selection_params": {
                "model_name": task["model_name"], "outlier_paramset_id": task["outlier_paramset_id"]}})
            cls.Frame.insert({**key, **_recording_key(r), "frame_index": r["frame_index"],
                              "reason": "outlier", "score": r["outlier_score"]} for r in rows)
        return key


# --- the model's mistakes ----------------------------------------------------------------


@schema
class OutlierParamSet(dj.Lookup):
    """Parameters of :func:`element_pose.outliers.score_frames`, deduplicated by content."""

    definition = """
    outlier_paramset_id: int16
    ---
    params: json
    params_sha256: char(64)
    unique index (params_sha256)
    """

    @classmethod
    def insert_new_params(cls, params: dict | None = None, outlier_paramset_id: int | None = None) -> dict:
        """Validate (:class:`~element_pose.outliers.OutlierParams`) and insert; returns the key."""
        from .outliers import OutlierParams

        full = OutlierParams.from_dict(params or {}).to_dict()
        return train.insert_hashed_params(cls, "outlier_paramset_id", full, outlier_paramset_id, {},
                                          lambda p: OutlierParams.from_dict(p).to_dict())


@schema
class OutlierTask(dj.Manual):
    """Score a pose estimation's frames; ``Reference`` rows add other models' estimates of the
    same recording (an ensemble, e.g. another seed) for the disagreement signal."""

    definition = """
    -> model.PoseEstimation
    -> OutlierParamSet
    """

    class Reference(dj.Part):
        definition = """
        -> master
        -> model.PoseEstimation.proj(reference_model='model_name')
        """

    @classmethod
    def add(cls, pose_key: dict, params: dict | None = None,
            reference_models: Sequence[str] = ()) -> dict:
        """Insert a task for one ``PoseEstimation`` (and its references); returns its key."""
        keys = (model.PoseEstimation & pose_key).keys()
        if len(keys) != 1:
            raise ValueError(f"{pose_key} matches {len(keys)} pose estimations; give one.")
        pose = keys[0]
        parts = model.Model.bodyparts(pose)
        refs = []
        for name in reference_models:
            ref = {**_recording_key(pose), "model_name": name}
            if not model.PoseEstimation & ref:
                raise ValueError(f"No PoseEstimation of this recording by model {name!r}; populate "
                                 "it first (PoseEstimationTask.add + PoseEstimation.populate).")
            if name == pose["model_name"]:
                raise ValueError("A reference model must differ from the scored model.")
            if set(model.Model.bodyparts({"model_name": name})) != set(parts):
                raise ValueError(f"Model {name!r} predicts other body parts than "
                                 f"{pose['model_name']!r}; references must share the body parts.")
            refs.append({**_recording_key(pose), "reference_model": name})
        key = {**pose, **OutlierParamSet.insert_new_params(params)}
        with cls.connection.transaction:
            cls.insert1(key, skip_duplicates=True)
            cls.Reference.insert(({**key, **r} for r in refs), skip_duplicates=True)
        return key


@schema
class OutlierScore(RecoverJobs, dj.Computed):
    """Per-frame outlier signals and score of a pose estimation, and the frames picked."""

    definition = """
    -> OutlierTask
    ---
    score: <npy@main>                 # (frames,) combined score (sum of robust z-scores)
    likelihood_signal: <npy@main>     # (frames,) mean of 1 - likelihood
    jump_signal: <npy@main>           # (frames,) px
    filter_signal: <npy@main>         # (frames,) px from the running median
    ensemble_signal=null: <npy@main>  # (frames,) px from the reference models (NULL without)
    """

    class Frame(dj.Part):
        definition = """
        -> master
        frame_index: int32
        ---
        outlier_rank: int32           # 0 = most suspicious
        outlier_score: float64
        main_signal: varchar(16)      # the signal that contributed most
        """

    def make(self, key: dict) -> None:
        from .outliers import OutlierParams, pick_spread, score_frames

        params = OutlierParams.from_dict((OutlierParamSet & key).fetch1("params"))
        pose, parts = model.PoseEstimation.pose_array(key)
        references = []
        for ref in (OutlierTask.Reference & key).to_dicts():
            other, other_parts = model.PoseEstimation.pose_array(
                {**_recording_key(ref), "model_name": ref["reference_model"]})
            references.append(other[:, [other_parts.index(p) for p in parts]])
        scores = score_frames(pose, references, params)
        picked = pick_spread(scores.score, params.n_frames, params.min_gap)
        raw = scores.signals
        self.insert1({**key, "score": scores.score, "likelihood_signal": raw["likelihood"],
                      "jump_signal": raw["jump"], "filter_signal": raw["filter"],
                      "ensemble_signal": raw.get("ensemble")})
        self.Frame.insert(
            {**key, "frame_index": int(i), "outlier_rank": rank,
             "outlier_score": float(scores.score[i]), "main_signal": scores.main_signal(int(i))}
            for rank, i in enumerate(picked))


# --- labeling rounds ------------------------------------------------------------------------


@schema
class LabelingRound(dj.Manual):
    """Frames sent out to a labeling tool, and where: a dataset's frames plus a selection's."""

    definition = """
    labeling_round: varchar(64)
    ---
    -> train.LabeledDataset           # the dataset the labels extend
    -> FrameSelection                 # the frames added
    export_format: varchar(8)         # dlc | sleap
    export_path: varchar(1000)        # the project folder / .slp written
    prefill_model='': varchar(64)     # model whose predictions pre-filled the new frames ('' = none)
    export_time=CURRENT_TIMESTAMP: datetime
    """

    class NewFrame(dj.Part):
        definition = """
        -> master
        -> FrameSelection.Frame
        ---
        frame_name: varchar(255)      # its name in the new dataset version
        export_name: varchar(255)     # its name when the labeled file is read back
        image_sha256: char(64)        # of the image exported
        """

    class ParentFrame(dj.Part):
        definition = """
        -> master
        -> train.LabeledDataset.Frame
        ---
        export_name: varchar(255)
        """

    @classmethod
    def export(cls, name: str, dataset_key: dict, selection_key: dict, path: str | Path,
               export_format: str = "dlc", prefill_model: dict | None = None) -> dict:
        """Write the dataset's frames and the selection's new frames for labeling.

        Parameters
        ----------
        name : str
            Round name (primary key).
        dataset_key, selection_key : dict
            The labeled dataset to extend and the :class:`FrameSelection` to add.
        path : str or Path
            A new folder (``"dlc"``: a DeepLabCut project) or ``.slp`` file (``"sleap"``).
        prefill_model : dict, optional
            A ``Model`` whose predictions fill in the new frames (DeepLabCut: labels at or
            above its p-cutoff; SLEAP: predicted instances), so the labeler corrects instead
            of starting from nothing.
        """
        from .io.dlc import label_frame_name, write_dlc_project
        from .io.sleap import write_sleap

        check_name(name, "labeling round name", 64)
        if export_format not in EXPORT_FORMATS:
            raise ValueError(f"export_format must be one of {EXPORT_FORMATS}, got {export_format!r}.")
        if cls & {"labeling_round": name}:
            raise ValueError(f"A labeling round named {name!r} exists; choose another name.")
        data, payloads, rows = train.LabeledDataset.labeled_data(dataset_key)
        if len(data.individuals) > 1:
            raise NotImplementedError("Labeling rounds of multi-animal datasets are not supported yet.")
        dataset = {"dataset": rows[0]["dataset"]}
        selected = (FrameSelection.Frame & selection_key).to_dicts(order_by="frame_index")
        if not selected:
            raise ValueError(f"No frames in selection {selection_key}.")
        selection = {"selection": selected[0]["selection"]}
        taken = {(r["source_video"], r["source_frame_index"]) for r in rows}
        new_frames, new_images, new_rows = [], [], []
        by_recording: dict[tuple, list[dict]] = {}
        for row in selected:
            by_recording.setdefault(tuple(sorted(_recording_key(row).items())), []).append(row)
        for recording_items, members in by_recording.items():
            recording = dict(recording_items)
            video = _video_paths(recording)[0]
            frames = _read_frames(recording, [r["frame_index"] for r in members])
            for row in members:
                if {(video.name, row["frame_index"]), (video.stem, row["frame_index"])} & taken:
                    logger.warning("Frame %d of %s is already labeled in %s; not exported again.",
                                   row["frame_index"], video.name, dataset["dataset"])
                    continue
                ok, encoded = cv2.imencode(".png", cv2.cvtColor(frames[row["frame_index"]], cv2.COLOR_RGB2BGR))
                if not ok:
                    raise ValueError(f"Cannot encode frame {row['frame_index']} of {video} as PNG.")
                payload = encoded.tobytes()
                frame_name = label_frame_name("", video.stem, row["frame_index"], payload)
                new_frames.append(FrameSource(name=frame_name, source_video=video.name,
                                              frame_index=row["frame_index"]))
                new_images.append(payload)
                new_rows.append(row)
        names = [f.name for f in data.frames]
        clash = sorted(set(names) & {f.name for f in new_frames})
        if clash:
            raise ValueError(f"New frames would be named like frames of {dataset['dataset']!r}: "
                             f"{clash[:3]}. Exclude already labeled frames from the selection.")
        n_new, parts = len(new_frames), data.bodyparts
        guess = np.full((n_new, 1, len(parts), 3), np.nan)
        prefill = ""
        if prefill_model is not None and n_new:
            prefill = model.Model._one(prefill_model)
            model_parts = model.Model.bodyparts({"model_name": prefill})
            if set(model_parts) != set(parts):
                raise ValueError(f"Model {prefill!r} predicts {model_parts}, dataset "
                                 f"{dataset['dataset']!r} is labeled with {parts}: it cannot pre-fill.")
            net = model.Model.load({"model_name": prefill})
            images = [cv2.cvtColor(cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_COLOR),
                                   cv2.COLOR_BGR2RGB) for p in new_images]
            predicted = net.predict_frames(images)[:, [model_parts.index(p) for p in parts]]
            guess[:, 0] = predicted
        all_data = LabeledData(
            bodyparts=parts, individuals=data.individuals,
            frames=[FrameSource(name=f.name, source_video=f.source_video, frame_index=f.frame_index)
                    for f in data.frames + new_frames],
            keypoints=np.concatenate([data.keypoints, np.full((n_new, 1, len(parts), 2), np.nan)]),
            scorer=data.scorer, skeleton=data.skeleton)
        images = payloads + new_images
        path = Path(path)
        if export_format == "dlc":
            export_names = [label_frame_name(f.name, f.source_video, f.frame_index if f.frame_index
                                             is not None else r["frame_id"], p)
                            for f, r, p in zip(data.frames, rows, payloads, strict=True)]
            export_names += [f.name for f in new_frames]
            for frame, export_name in zip(all_data.frames, export_names, strict=True):
                frame.name = export_name
            if prefill:
                pcutoff = float((model.Model & {"model_name": prefill}).fetch1("config").get(
                    "pcutoff", model.DEFAULT_PCUTOFF))
                xy = guess[..., :2].copy()
                xy[guess[..., 2] < pcutoff] = np.nan
                all_data.keypoints[len(data):] = xy
            write_dlc_project(path, all_data, images, task=f"element-pose-{name}")
        else:
            predicted = np.concatenate([np.full((len(data), 1, len(parts), 3), np.nan), guess])
            path, export_names = write_sleap(path, all_data, images,
                                             predicted=predicted if prefill else None)
        key = {"labeling_round": name}
        with cls.connection.transaction:
            cls.insert1({**key, **dataset, **selection, "export_format": export_format,
                         "export_path": str(path.absolute())[:1000], "prefill_model": prefill})
            cls.ParentFrame.insert({**key, **dataset, "frame_id": r["frame_id"], "export_name": n}
                                   for r, n in zip(rows, export_names, strict=False))
            cls.NewFrame.insert(
                {**key, **{k: r[k] for k in FrameSelection.Frame.primary_key}, "frame_name": f.name,
                 "export_name": export_names[len(data) + i], "image_sha256": sha256_bytes(p)}
                for i, (r, f, p) in enumerate(zip(new_rows, new_frames, new_images, strict=True)))
        logger.info("Labeling round %r: %d frames of %s and %d new frames written to %s.", name,
                    len(data), dataset["dataset"], n_new, path)
        return key

    @classmethod
    def merge(cls, round_key: dict, new_dataset: str, labeled: str | Path | Sequence[str | Path] | None = None,
              on_conflict: str = "error", description: str = "") -> dict:
        """Import a round's labeled result as a new version of its dataset.

        Parameters
        ----------
        round_key : dict
            The :class:`LabelingRound`.
        new_dataset : str
            Name of the new ``LabeledDataset``; its :class:`DatasetVersion` row records the
            parent and, per frame, whether it is ``new``, ``corrected`` or ``unchanged``.
        labeled : path or list of paths, optional
            The labeled project folder(s) / ``.slp`` file(s); default the round's export.
            Several = several labelers' copies of the same export.
        on_conflict : {"error", "first", "mean"}
            When two copies label a point differently: raise (naming the frames), take the
            first copy's, or average them.

        Every frame of the parent is kept (a frame missing from the labeled copy keeps its
        old labels); new frames without any label are left out (logged). Images must be the
        ones exported (sha256-checked) and body parts must not change: otherwise nothing is
        inserted and the error says which.
        """
        from .io.dlc import read_dlc_project
        from .io.sleap import read_sleap

        if on_conflict not in CONFLICT_RULES:
            raise ValueError(f"on_conflict must be one of {CONFLICT_RULES}, got {on_conflict!r}.")
        check_name(new_dataset, "dataset name", 64)
        row = (cls & round_key).fetch1()
        if train.LabeledDataset & {"dataset": new_dataset}:
            raise ValueError(f"Dataset {new_dataset!r} exists; choose a new name for the new version.")
        paths = [row["export_path"]] if labeled is None else \
            [labeled] if isinstance(labeled, (str, Path)) else list(labeled)
        if not paths:
            raise ValueError("labeled must name at least one labeled project folder or .slp file.")
        parent = {"dataset": row["dataset"]}
        parent_data, parent_payloads, parent_rows = train.LabeledDataset.labeled_data(parent)
        parts = parent_data.bodyparts
        parent_by_export = {r["export_name"]: r["frame_id"]
                            for r in (cls.ParentFrame & round_key).to_dicts()}
        export_of_parent = {f: n for n, f in parent_by_export.items()}
        new_by_export = {r["export_name"]: r for r in (cls.NewFrame & round_key).to_dicts()}
        parent_index = {r["frame_id"]: i for i, r in enumerate(parent_rows)}
        copies = []
        for path in paths:
            path = Path(path)
            data = read_sleap(path) if row["export_format"] == "sleap" else read_dlc_project(path)
            if set(data.bodyparts) != set(parts):
                raise ValueError(
                    f"The body parts of {path} changed: added {sorted(set(data.bodyparts) - set(parts))}, "
                    f"removed {sorted(set(parts) - set(data.bodyparts))}. A new version keeps the "
                    f"body parts of {parent['dataset']!r}; restore them in the labeling tool, or "
                    "import the project as a new dataset with LabeledDataset.import_dlc.")
            order = [data.bodyparts.index(p) for p in parts]
            labels = {}
            for i, frame in enumerate(data.frames):
                sha = sha256_bytes(Path(frame.image_path).read_bytes()) if frame.image_path else None
                if frame.name in parent_by_export:
                    expected = parent_rows[parent_index[parent_by_export[frame.name]]]["image_sha256"]
                elif frame.name in new_by_export:
                    expected = new_by_export[frame.name]["image_sha256"]
                else:
                    raise ValueError(
                        f"{path} has frame {frame.name!r}, which the round did not export. Add "
                        "frames through a FrameSelection and a new round, or remove it.")
                if sha != expected:
                    raise ValueError(
                        f"The image of frame {frame.name!r} in {path} is not the one exported "
                        "(its sha256 differs): images must not be edited. Restore it from the "
                        "export, or import the folder as a new dataset.")
                labels[frame.name] = data.keypoints[i, 0][order]
            copies.append((path, labels))
        merged = _merge_copies(copies, on_conflict)

        keypoints, frames, changes = [], [], []
        for i, (frame, prow) in enumerate(zip(parent_data.frames, parent_rows, strict=True)):
            export_name = export_of_parent[prow["frame_id"]]
            old = parent_data.keypoints[i, 0]
            new = merged.get(export_name, old)
            same = np.array_equal(np.isnan(old), np.isnan(new)) and np.allclose(
                np.nan_to_num(old), np.nan_to_num(new), atol=1e-6)
            frames.append(FrameSource(name=frame.name, image_path=None, source_video=frame.source_video,
                                      frame_index=frame.frame_index))
            keypoints.append(old if same else new)
            changes.append(("unchanged" if same else "corrected", prow["frame_id"]))
        new_images = {}
        for export_name, nrow in new_by_export.items():
            points = merged.get(export_name)
            if points is None or np.isnan(points).all():
                logger.info("New frame %r has no labels; left out of %s.", export_name, new_dataset)
                continue
            frames.append(FrameSource(name=nrow["frame_name"], source_video=None,
                                      frame_index=nrow["frame_index"]))
            new_images[nrow["frame_name"]] = nrow
            keypoints.append(points)
            changes.append(("new", None))
        # Pixels: parent frames as stored, new frames from the labeled copy (verified above).
        first_path = copies[0][0]
        round_name = row["labeling_round"]

        def lineage(key: dict) -> None:
            DatasetVersion.insert1({**key, "parent_dataset": parent["dataset"],
                                    "labeling_round": round_name})
            DatasetVersion.Frame.insert(
                {**key, "frame_id": i, "change": change, "parent_frame_id": parent_id}
                for i, (change, parent_id) in enumerate(changes))

        with tempfile.TemporaryDirectory(prefix="element_pose_merge_") as folder:
            for i, frame in enumerate(frames):
                if frame.name in new_images:
                    nrow = new_images[frame.name]
                    frame.source_video = _video_paths(_recording_key(nrow))[0].name
                    frame.image_path = _exported_image(first_path, row["export_format"],
                                                       nrow["export_name"])
                else:
                    # the stored bytes, so the image (and its sha256) stays the parent's
                    frame.image_path = Path(folder) / f"{i:08d}{Path(frame.name).suffix or '.png'}"
                    frame.image_path.write_bytes(parent_payloads[i])
            data = LabeledData(bodyparts=parts, individuals=parent_data.individuals, frames=frames,
                               keypoints=np.stack(keypoints)[:, None], scorer=parent_data.scorer,
                               skeleton=parent_data.skeleton, source=str(first_path))
            key = train.LabeledDataset.import_labels(
                data, new_dataset, source_format=row["export_format"],
                description=description or f"{parent['dataset']} + labeling round {round_name}",
                also_insert=lineage)
        counts = {c: sum(1 for x, _ in changes if x == c) for c in ("new", "corrected", "unchanged")}
        logger.info("Dataset %r: %s.", new_dataset, counts)
        return key


def _merge_copies(copies: list[tuple[Path, dict]], rule: str) -> dict[str, np.ndarray]:
    """One label array per frame from several labelers' copies (see ``LabelingRound.merge``)."""
    merged: dict[str, np.ndarray] = {}
    source: dict[str, Path] = {}
    for path, labels in copies:
        for name, points in labels.items():
            if name not in merged:
                merged[name], source[name] = points.copy(), path
                continue
            old = merged[name]
            both = ~np.isnan(old).any(-1) & ~np.isnan(points).any(-1)
            differ = both & (np.abs(old - points).max(-1) > 1e-6)
            if differ.any() and rule == "error":
                raise ValueError(
                    f"Frame {name!r} is labeled differently in {source[name]} and {path} "
                    f"(body part index {int(np.flatnonzero(differ)[0])}). Reconcile the copies, or "
                    "merge with on_conflict='first' (the first copy wins) or 'mean' (average).")
            if rule == "mean":
                old[both] = (old[both] + points[both]) / 2
            only_new = np.isnan(old).any(-1) & ~np.isnan(points).any(-1)
            old[only_new] = points[only_new]
    return merged


def _exported_image(labeled: Path, export_format: str, export_name: str) -> Path:
    """Where a labeled copy holds the image of an exported frame."""
    if export_format == "dlc":
        return labeled / export_name
    folder, index = export_name.rsplit("/", 1)
    found = sorted((labeled.with_name(labeled.stem + ".images") / folder).glob(f"{index}.*"))
    if not found:
        raise FileNotFoundError(f"The image of {export_name} is missing beside {labeled}.")
    return found[0]


@schema
class DatasetVersion(dj.Manual):
    """A labeled dataset made from another by a labeling round: its parent and, per frame, what
    changed."""

    definition = """
    -> train.LabeledDataset
    ---
    -> train.LabeledDataset.proj(parent_dataset='dataset')
    labeling_round='': varchar(64)
    """

    class Frame(dj.Part):
        definition = """
        -> master
        -> train.LabeledDataset.Frame
        ---
        change: varchar(12)           # new | corrected | unchanged
        parent_frame_id=null: int32   # the frame in the parent (NULL for new frames)
        """


def compare_models(model_names: Sequence[str], split_key: dict) -> pd.DataFrame:
    """Evaluations of several models on one data split, side by side (one row per model).

    Evaluate the previous iteration's model on the extended split too (``ModelEvaluation
    .populate``): the earlier test frames are the same, so the test error is comparable.
    """
    rows = []
    for name in model_names:
        key = {"model_name": name, **{k: split_key[k] for k in train.DataSplit.primary_key}}
        found = (model.ModelEvaluation & key).to_dicts()
        if not found:
            raise ValueError(f"No ModelEvaluation of {name!r} on {split_key}; run "
                             "ModelEvaluation.populate() first.")
        rows.append({k: found[0][k] for k in ("model_name", "train_error_px", "test_error_px",
                                               "test_median_error_px", "test_pck5",
                                               "test_error_pcutoff_px")})
    return pd.DataFrame(rows).set_index("model_name")
