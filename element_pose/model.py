"""Schema ``model``: video recordings, models, evaluations and pose estimation.

Upstream tables come from the linking module given to :func:`activate`: ``Session`` (one
recording session) and ``Device`` (the camera), plus ``get_pose_root_data_dir()``.
"""

from __future__ import annotations

import importlib
import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datajoint as dj
import numpy as np
import pandas as pd

from . import train
from .hashing import canonical_json, sha256_bytes, sha256_file, sha256_json
from .jobs import RecoverJobs
from .names import check_name, check_names
from .paths import to_full, to_relative

logger = logging.getLogger(__name__)

schema = dj.Schema()
_linking_module = None

TASK_MODES = ("trigger", "load")
DEFAULT_PCUTOFF = 0.6


def activate(
    model_schema_name: str,
    *,
    train_schema_name: str | None = None,
    create_schema: bool = True,
    create_tables: bool = True,
    linking_module: Any = None,
) -> None:
    """Activate the ``model`` schema (and ``train`` first when its name is given).

    Parameters
    ----------
    model_schema_name : str
        Database schema name for this module.
    train_schema_name : str, optional
        Schema name for :mod:`element_pose.train`, activated first if given.
    linking_module : module or str
        Provides ``Session``, ``Device`` and ``get_pose_root_data_dir()``.
    """
    global _linking_module
    if isinstance(linking_module, str):
        linking_module = importlib.import_module(linking_module)
    for name in ("Session", "Device"):
        if not hasattr(linking_module, name):
            raise ValueError(f"The linking module must define the upstream table {name!r}.")
    _linking_module = linking_module
    if train_schema_name:
        train.activate(train_schema_name, create_schema=create_schema,
                       create_tables=create_tables, linking_module=linking_module)
    schema.activate(model_schema_name, create_schema=create_schema,
                    create_tables=create_tables, add_objects=linking_module.__dict__)


def _root_dirs() -> list[str]:
    fn = getattr(_linking_module, "get_pose_root_data_dir", None)
    return list(fn()) if fn else []


# --- recordings ----------------------------------------------------------------------------


@schema
class VideoRecording(dj.Manual):
    """A video recording of a session by one camera; may span several files."""

    definition = """
    -> Session
    recording_id: int16
    ---
    -> Device
    recording_description='': varchar(1000)
    """

    class File(dj.Part):
        definition = """
        -> master
        file_id: int16                # order of concatenation
        ---
        file_path: varchar(1000)      # relative to a root data directory (or absolute)
        """

    @classmethod
    def add(cls, session_key: dict, recording_id: int, device_key: dict,
            files: Sequence[str | Path] | str | Path, description: str = "") -> dict:
        """Insert a recording and its files (checked to exist; stored relative to a root).

        Returns the recording key; an identical existing recording is returned as is.
        """
        if isinstance(files, (str, Path)):
            files = [files]
        if not files:
            raise ValueError("A recording needs at least one video file.")
        if isinstance(recording_id, bool) or not isinstance(recording_id, (int, np.integer)):
            raise TypeError(f"recording_id must be an int, got {recording_id!r}.")
        full = [to_full(f, _root_dirs) for f in files]
        relative = [to_relative(f, _root_dirs) for f in full]
        session = (_linking_module.Session & session_key).keys()
        if len(session) != 1:
            raise ValueError(f"{session_key} matches {len(session)} sessions; give exactly one.")
        session = session[0]
        key = {**session, "recording_id": int(recording_id)}
        if cls & key:
            stored = [r["file_path"] for r in (cls.File & key).to_dicts(order_by="file_id")]
            if stored == relative:
                return key
            raise ValueError(f"Recording {key} exists with other files {stored}; use a new recording_id.")
        with cls.connection.transaction:
            cls.insert1({**key, **device_key, "recording_description": description})
            cls.File.insert({**key, "file_id": i, "file_path": p} for i, p in enumerate(relative))
        return key

    @classmethod
    def file_paths(cls, key: dict) -> list[Path]:
        """Full paths of the recording's files, in order (each checked to exist)."""
        rows = (cls.File & key).to_dicts(order_by="file_id")
        if not rows:
            raise ValueError(f"Recording {key} has no files; add rows to VideoRecording.File.")
        return [to_full(r["file_path"], _root_dirs) for r in rows]


@schema
class RecordingInfo(RecoverJobs, dj.Imported):
    """What the video files hold: measured by decoding, not read from headers."""

    definition = """
    -> VideoRecording
    ---
    px_width: int32
    px_height: int32
    frame_count: int32                # frames that decode, all files together
    fps: float64
    duration: float64                 # seconds
    timestamps: <npy@main>            # seconds from the first frame, one per frame
    codec: varchar(16)
    file_frame_counts: json           # frames per file, in order
    """

    def make(self, key: dict) -> None:
        from .engine.video import VideoError, probe_video

        infos = [probe_video(p, progress=True) for p in VideoRecording.file_paths(key)]
        first = infos[0]
        for info in infos[1:]:
            if abs(info.fps - first.fps) > 1e-3 * first.fps:
                raise VideoError(f"{info.path} runs at {info.fps:g} fps but {first.path} at {first.fps:g}; "
                                 "files of one recording must share a frame rate.")
            if (info.width, info.height) != (first.width, first.height):
                raise VideoError(
                    f"{info.path} is {info.width}x{info.height} but {first.path} is "
                    f"{first.width}x{first.height}; files of one recording must share a size."
                )
        stamps, offset = [], 0.0
        for info in infos:
            stamps.append(info.timestamps + offset)
            offset = stamps[-1][-1] + 1.0 / info.fps
        timestamps = np.concatenate(stamps)
        self.insert1({
            **key,
            "px_width": first.width,
            "px_height": first.height,
            "frame_count": len(timestamps),
            "fps": first.fps,
            "duration": len(timestamps) / first.fps,
            "timestamps": timestamps,
            "codec": first.codec[:16],
            "file_frame_counts": [i.frame_count for i in infos],
        })


# --- models ---------------------------------------------------------------------------------


@schema
class Model(dj.Manual):
    """A pose model, immutable: its weights and their hash never change under a name.

    Models of the bundled engine hold their weights. *External* models stand for another
    tool's model (DeepLabCut, SLEAP, ...) whose outputs are loaded (``PoseEstimationTask``
    ``mode="load"``): no weights, and the tool, its version and its scorer kept as provenance.
    """

    definition = """
    model_name: varchar(64)
    ---
    model_description='': varchar(1000)
    weights=null: <object@main>       # self-contained checkpoint (NULL for external tools)
    weights_sha256='': varchar(64)    # '' for external tools
    config=null: json                 # engine config it was trained with
    bodyparts_sha256: char(64)        # order-free hash of its body parts
    scorer: varchar(96)               # scorer name in DeepLabCut-style outputs
    source_tool='element-pose': varchar(32)  # element-pose | DeepLabCut | SLEAP | ...
    source_tool_version='': varchar(32)
    created_at=CURRENT_TIMESTAMP: datetime
    """

    class BodyPart(dj.Part):
        definition = """
        -> master
        -> train.BodyPart
        ---
        part_index: int16             # output channel
        """

    class Training(dj.Part):
        definition = """
        # the training run that produced the model, when it came from one
        -> master
        -> train.ModelTraining
        """

    class Individual(dj.Part):
        definition = """
        # the individuals of a multi-animal model (none for a single-animal one)
        -> master
        individual: varchar(32)
        ---
        individual_index: int16       # order of the names (identity output channel)
        """

    @classmethod
    def from_training(cls, training_key: dict, name: str, description: str = "") -> dict:
        """Register the model trained by a ``train.ModelTraining`` row under ``name``."""
        row = (train.ModelTraining & training_key).fetch1()
        path = train.fetch_weights(train.ModelTraining, training_key)
        key = cls._register(path, name, description, provenance={
            k: row[k] for k in train.ModelTraining.primary_key})
        return key

    @classmethod
    def from_checkpoint(cls, path: str | Path, name: str, description: str = "") -> dict:
        """Register an external checkpoint file written by the bundled engine."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Checkpoint not found: {path}.")
        return cls._register(path, name, description, provenance=None)

    @classmethod
    def _register(cls, path: Path, name: str, description: str, provenance: dict | None) -> dict:
        from .engine.multianimal import MultiAnimalModel, load_any_model

        train._check_name(name, "name")
        sha = sha256_file(path)
        key = {"model_name": name}
        if cls & key:
            if (cls & key).fetch1("weights_sha256") == sha:
                return key
            raise ValueError(
                f"Model {name!r} already exists with other weights; models are immutable. "
                "Register the new weights under a new name."
            )
        try:
            net = load_any_model(path, device="cpu")
        except Exception as error:
            raise ValueError(f"{path} is not a checkpoint of the bundled engine: {error}") from error
        bodyparts = list(net.bodyparts)
        multi = isinstance(net, MultiAnimalModel)
        individuals = net.individuals if multi else []
        with cls.connection.transaction:
            train.BodyPart.insert(({"body_part": b} for b in bodyparts), skip_duplicates=True)
            cls.insert1({**key, "model_description": description, "weights": str(path),
                         "weights_sha256": sha,
                         "config": net.config_dict if multi else net.config.to_dict(),
                         "bodyparts_sha256": train.bodyparts_sha256(bodyparts),
                         "scorer": f"element-pose_{name}"})
            cls.BodyPart.insert({**key, "body_part": b, "part_index": i} for i, b in enumerate(bodyparts))
            cls.Individual.insert({**key, "individual": n, "individual_index": i}
                                  for i, n in enumerate(individuals))
            if provenance:
                cls.Training.insert1({**key, **provenance})
        return key

    @classmethod
    def from_external(cls, name: str, tool: str, bodyparts: Sequence[str], scorer: str = "",
                      version: str = "", description: str = "",
                      individuals: Sequence[str] = ()) -> dict:
        """Register another tool's model, whose outputs are then loaded with provenance.

        ``individuals``: the animal names of a multi-animal tool's outputs (DeepLabCut's
        individuals, SLEAP's tracks); a loaded file must have the same ones. Registering the
        same provenance under the same name again is a no-op.
        """
        train._check_name(name, "name")
        check_name(tool, "tool", 32)
        if tool == "element-pose":
            raise ValueError("Models of the bundled engine are registered with from_training or "
                             "from_checkpoint.")
        parts = check_names(list(bodyparts), "body part", 64)
        individuals = check_names(list(individuals), "individual", 32) if individuals else []
        key = {"model_name": name}
        row = {**key, "model_description": description, "scorer": (scorer or name)[:96],
               "bodyparts_sha256": train.bodyparts_sha256(parts), "source_tool": tool,
               "source_tool_version": str(version)[:32]}
        if cls & key:
            old = (cls & key).fetch1()
            if any(old[k] != row[k] for k in ("scorer", "bodyparts_sha256", "source_tool",
                                             "source_tool_version")) \
                    or cls.individuals(key) != individuals:
                raise ValueError(f"Model {name!r} already exists with another provenance "
                                 f"({old['source_tool']} {old['scorer']!r}); models are "
                                 "immutable. Use a new name.")
            return key
        with cls.connection.transaction:
            train.BodyPart.insert(({"body_part": b} for b in parts), skip_duplicates=True)
            cls.insert1(row)
            cls.BodyPart.insert({**key, "body_part": b, "part_index": i} for i, b in enumerate(parts))
            cls.Individual.insert({**key, "individual": n, "individual_index": i}
                                  for i, n in enumerate(individuals))
        return key

    @classmethod
    def from_output_file(cls, path: str | Path, name: str, version: str = "",
                         description: str = "") -> dict:
        """Register the external model that wrote a pose output file (its tool, scorer and
        body parts read from the file)."""
        from .io.outputs import read_pose_output

        out = read_pose_output(to_full(path, _root_dirs))
        return cls.from_external(name, out.tool, out.bodyparts, scorer=out.scorer,
                                 version=version or out.version, description=description,
                                 individuals=out.individuals)

    @classmethod
    def is_external(cls, key: dict) -> bool:
        """True for another tool's model (no weights; outputs can only be loaded)."""
        return (cls & key).fetch1("source_tool") != "element-pose"

    @classmethod
    def lineage(cls, key: dict) -> list[dict]:
        """Provenance of a model, newest first: per model its name, the training run, dataset,
        split, parameter set and the model it was fine-tuned from (None at the root)."""
        out, name, seen = [], cls._one(key), set()
        while name is not None and name not in seen:
            seen.add(name)
            row: dict = {"model_name": name, "parent_model": None}
            run = (cls.Training & {"model_name": name}).to_dicts()
            if run:
                task = {k: run[0][k] for k in train.TrainingTask.primary_key}
                row.update(task)
                row["dataset"] = (train.DataSplit & task).fetch1("dataset")
                parent = (TrainingInit & task).to_dicts()
                row["parent_model"] = parent[0]["parent_model"] if parent else None
            out.append(row)
            name = row["parent_model"]
        return out

    @classmethod
    def _one(cls, key: dict) -> str:
        rows = (cls & key).to_dicts()
        if len(rows) != 1:
            raise ValueError(f"{key} matches {len(rows)} models; give one model_name.")
        return rows[0]["model_name"]

    @classmethod
    def bodyparts(cls, key: dict) -> list[str]:
        """The model's body parts in output order."""
        return [r["body_part"] for r in (cls.BodyPart & key).to_dicts(order_by="part_index")]

    @classmethod
    def individuals(cls, key: dict) -> list[str]:
        """The individuals of a multi-animal model in order ([] for a single-animal one)."""
        return [r["individual"] for r in
                (cls.Individual & key).to_dicts(order_by="individual_index")]

    @classmethod
    def is_multianimal(cls, key: dict) -> bool:
        """True for a model that finds several animals per frame."""
        return bool(cls.Individual & {"model_name": cls._one(key)})

    @classmethod
    def skeleton(cls, key: dict) -> list[tuple[str, str]]:
        """Skeleton edges of the dataset the model was trained on ([] when unknown)."""
        source = train.LabeledDataset & (train.DataSplit & (cls.Training & key))
        if not source:
            return []
        return [tuple(edge) for edge in source.fetch1("skeleton")]

    @classmethod
    def load(cls, key: dict, device: str = "auto"):
        """The engine's ``PoseModel`` (or ``MultiAnimalModel``) for a stored model, its
        weights hash verified."""
        from .engine.multianimal import load_any_model

        if cls.is_external(key):
            row = (cls & key).fetch1()
            raise ValueError(f"Model {row['model_name']!r} is an external {row['source_tool']} "
                             "model without weights: load its outputs (PoseEstimationTask.add("
                             "..., mode='load', output_path=...)) instead of running it.")
        return load_any_model(train.fetch_weights(cls, key), device=device)


@schema
class TrainingInit(dj.Manual):
    """The stored model a training task starts from: fine-tuning a lab's earlier model.

    Every weight of the parent is copied; the output channels of body parts it shares with
    the task's dataset (by name) too, so a different body-part set works. Tasks without a row
    start from their parameter set's ``pretrained`` setting (random or ImageNet weights, or
    a local checkpoint). ``Model.lineage`` walks these links.
    """

    definition = """
    -> train.TrainingTask
    ---
    -> Model.proj(parent_model='model_name')
    """


@schema
class ModelEvaluation(RecoverJobs, dj.Computed):
    """A model's accuracy on a data split's train and test frames (errors in pixels)."""

    definition = """
    -> Model
    -> train.DataSplit
    ---
    pcutoff: float64                  # confidence cut-off for the *_pcutoff figures
    train_error_px=null: float64      # mean Euclidean error (what DeepLabCut calls RMSE)
    test_error_px=null: float64
    train_rmse_px=null: float64       # root mean squared Euclidean error
    test_rmse_px=null: float64
    train_error_pcutoff_px=null: float64
    test_error_pcutoff_px=null: float64
    test_median_error_px=null: float64
    train_pck5=null: float64          # fraction of visible labels within 5 px
    test_pck5=null: float64
    train_pck10=null: float64
    test_pck10=null: float64
    test_fraction_above_pcutoff=null: float64  # calibration: visible test labels predicted >= pcutoff
    test_error_below_pcutoff_px=null: float64  # mean error of those predicted below it
    test_absent_below_pcutoff=null: float64    # test keypoints not labeled (absent, occluded) predicted < pcutoff
    """

    class BodyPart(dj.Part):
        definition = """
        -> master
        -> Model.BodyPart
        ---
        train_error_px=null: float64
        test_error_px=null: float64
        """

    class Frame(dj.Part):
        definition = """
        -> master
        -> train.DataSplit.Frame
        ---
        error_px=null: float64        # mean over visible labels
        prediction: <blob>            # (bodyparts, 3): x, y, confidence; (animals, bodyparts, 3) multi-animal
        """

    class MultiAnimal(dj.Part):
        definition = """
        # detection and identity figures of a multi-animal model on the test frames
        -> master
        ---
        map_oks=null: float64         # mAP over OKS 0.50:0.95 (scale: animal length, kappa 0.1)
        missed: int32                 # labeled animals without a matched prediction
        spurious: int32               # predicted animals without a labeled one
        labeled_animals: int32
        frames_missed_or_spurious=null: float64  # fraction of test frames with either
        identity_accuracy=null: float64  # matched animals named right (identity models)
        """

    @property
    def key_source(self):
        # Only pairs whose body parts match (a model cannot be scored on other keypoints) and
        # whose number of animals match: single-animal models on single-animal datasets,
        # multi-animal models on multi-animal datasets.
        multi_data = train.LabeledDataset & (train.LabeledDataset.Individual & "individual_index > 0")
        single_data = train.LabeledDataset - multi_data.proj()
        engine = Model & {"source_tool": "element-pose"}  # external models cannot be run
        multi_models = engine & Model.Individual
        single_models = engine - Model.Individual
        pairs = (engine.proj(model_bp="bodyparts_sha256") * train.DataSplit.proj()
                 * train.LabeledDataset.proj(data_bp="bodyparts_sha256"))
        return ((pairs & "model_bp = data_bp")
                - (multi_models.proj() * single_data.proj())
                - (single_models.proj() * multi_data.proj())).proj()

    def make_fetch(self, key: dict) -> tuple:
        dataset = (train.LabeledDataset & key).fetch1("content_sha256")
        return ((Model & key).fetch1("weights_sha256"), dataset,
                (train.DataSplit & key).fetch1("split_sha256"))

    def make_compute(self, key: dict, *_hashes) -> tuple:
        # The network runs here, outside any database transaction.
        from .engine.metrics import evaluate

        dataset = {"dataset": key["dataset"]}
        parts = Model.bodyparts(key)
        data_parts = train.LabeledDataset.bodyparts(dataset)
        if set(parts) != set(data_parts):
            raise ValueError(f"Model {key['model_name']} predicts {parts} but dataset "
                             f"{key['dataset']} is labeled with {data_parts}.")
        net = Model.load(key)
        pcutoff = float((Model & key).fetch1("config").get("pcutoff", DEFAULT_PCUTOFF))
        order = [data_parts.index(p) for p in parts]
        if Model.is_multianimal(key):
            return self._compute_multianimal(key, net, pcutoff, parts, order)
        results, frames = {}, []
        for subset in ("train", "test"):
            ids = train.DataSplit.frame_ids(key, subset)
            truth = train.LabeledDataset.keypoints(dataset, ids)[:, 0][:, order]
            pred = net.predict_frames(train.LabeledDataset.images(dataset, ids, progress=True))
            results[subset] = evaluate(pred, truth, pcutoff=pcutoff, pck_thresholds=(5.0, 10.0))
            frames += [(frame_id, _num(results[subset]["per_frame_error_px"][i]),
                        np.asarray(pred[i], dtype=np.float32)) for i, frame_id in enumerate(ids)]
        return pcutoff, parts, results, frames

    @staticmethod
    def _compute_multianimal(key: dict, net, pcutoff: float, parts: list[str],
                             order: list[int]) -> tuple:
        """Errors after optimal matching of predicted to labeled animals, detection and
        identity figures."""
        from .engine.metrics import evaluate_multianimal
        from .engine.tracking import assign_identities

        dataset = {"dataset": key["dataset"]}
        data_individuals = train.LabeledDataset.individuals(dataset)
        model_individuals = Model.individuals(key)
        results, frames = {}, []
        for subset in ("train", "test"):
            ids = train.DataSplit.frame_ids(key, subset)
            truth = train.LabeledDataset.keypoints(dataset, ids)[:, :, order]
            found = net.predict_frames(train.LabeledDataset.images(dataset, ids, progress=True))
            result = evaluate_multianimal(found.poses, found.scores, truth, pcutoff=pcutoff)
            result["identity_accuracy"] = None
            if found.identity is not None:
                names = assign_identities(found.identity)
                right, total = 0, 0
                frame, slot = np.nonzero(result["matches"] >= 0)
                for i, g in zip(frame, slot, strict=True):
                    if data_individuals[g] in model_individuals:
                        total += 1
                        guess = names[i, result["matches"][i, g]]
                        right += int(guess >= 0 and model_individuals[guess] == data_individuals[g])
                result["identity_accuracy"] = right / total if total else None
            results[subset] = result
            errors = _frame_errors(found.poses, truth, result["matches"])
            frames += [(frame_id, _num(errors[i]), np.asarray(found.poses[i], dtype=np.float32))
                       for i, frame_id in enumerate(ids)]
        return pcutoff, parts, results, frames

    def make_insert(self, key: dict, pcutoff, parts, results, frames) -> None:
        tr, te = results["train"], results["test"]
        self.insert1({
            **key,
            "pcutoff": pcutoff,
            "train_error_px": _num(tr["mean_error_px"]), "test_error_px": _num(te["mean_error_px"]),
            "train_rmse_px": _num(tr["rmse_px"]), "test_rmse_px": _num(te["rmse_px"]),
            "train_error_pcutoff_px": _num(tr["mean_error_pcutoff_px"]),
            "test_error_pcutoff_px": _num(te["mean_error_pcutoff_px"]),
            "test_median_error_px": _num(te["median_error_px"]),
            "train_pck5": _num(tr["pck"][5.0]), "test_pck5": _num(te["pck"][5.0]),
            "train_pck10": _num(tr["pck"][10.0]), "test_pck10": _num(te["pck"][10.0]),
            "test_fraction_above_pcutoff": _num(te["fraction_above_pcutoff"]),
            "test_error_below_pcutoff_px": _num(te["mean_error_below_pcutoff_px"]),
            "test_absent_below_pcutoff": _num(te["absent_below_pcutoff"]),
        })
        self.BodyPart.insert(
            {**key, "body_part": p, "train_error_px": _num(tr["per_bodypart_error_px"][k]),
             "test_error_px": _num(te["per_bodypart_error_px"][k])}
            for k, p in enumerate(parts)
        )
        self.Frame.insert({**key, "frame_id": f, "error_px": e, "prediction": p} for f, e, p in frames)
        if "map_oks" in te:
            self.MultiAnimal.insert1({
                **key, "map_oks": _num(te["map_oks"]), "missed": int(te["missed"]),
                "spurious": int(te["spurious"]), "labeled_animals": int(te["labeled_animals"]),
                "frames_missed_or_spurious": _num(te["frames_with_missed_or_spurious"]),
                "identity_accuracy": _num(te["identity_accuracy"])})


def _frame_errors(poses: np.ndarray, truth: np.ndarray, matches: np.ndarray) -> np.ndarray:
    """Mean error per frame over the matched animals' visible labels (NaN: none)."""
    out = np.full(len(truth), np.nan)
    for i in range(len(truth)):
        errs = [np.linalg.norm(poses[i, p, :, :2] - truth[i, g], axis=1)
                for g, p in enumerate(matches[i]) if p >= 0]
        if errs:
            values = np.concatenate(errs)
            values = values[np.isfinite(values)]
            out[i] = values.mean() if len(values) else np.nan
    return out


def _num(value) -> float | None:
    """A float for the database, None for NaN/missing."""
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


# --- pose estimation ----------------------------------------------------------------------


@schema
class PoseEstimationTask(dj.Manual):
    """Run a model on a recording (``trigger``) or import an existing DeepLabCut output (``load``)."""

    definition = """
    -> RecordingInfo
    -> Model
    ---
    task_mode='trigger': varchar(8)   # trigger | load
    output_path='': varchar(1000)     # load: DeepLabCut .h5/.csv, relative to a root data dir
    inference_params=null: json       # e.g. {"batch_size": 8, "chunk_frames": 2048}
    """

    @classmethod
    def add(cls, recording_key: dict, model_key: dict, mode: str = "trigger",
            output_path: str | Path | None = None, batch_size: int = 8,
            chunk_frames: int = 2048, max_animals: int | None = None,
            tracker: dict | None = None) -> dict:
        """Insert a task after checking its arguments; returns its key.

        ``chunk_frames``: the analysis saves its output every that many frames, so a killed
        worker's successor resumes there instead of at frame 0 (single-animal models).
        ``max_animals`` (multi-animal models): most animals detected per frame, if not the
        model's own; ``tracker``: :class:`element_pose.engine.tracking.TrackerSettings`
        values (``max_gap``, ``max_cost``, ``pose_weight``, ``pcutoff``).
        """
        from .engine.tracking import TrackerSettings

        if mode not in TASK_MODES:
            raise ValueError(f"mode must be one of {TASK_MODES}, got {mode!r}.")
        for name, value in (("batch_size", batch_size), ("chunk_frames", chunk_frames),
                            ("max_animals", 1 if max_animals is None else max_animals)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TypeError(f"{name} must be a positive int, got {value!r}.")
        if (max_animals or tracker) and not Model.is_multianimal(model_key):
            raise ValueError(
                f"Model {(Model & model_key).fetch1('model_name')!r} is a single-animal model: "
                "it finds one animal per frame, so max_animals and tracker do not apply. Train "
                "a multi-animal model on a dataset labeled with several individuals.")
        if tracker is not None:
            if not isinstance(tracker, dict):
                raise TypeError(f"tracker must be a dict, got {type(tracker).__name__}.")
            try:
                TrackerSettings(**tracker)
            except TypeError as error:
                raise ValueError(f"tracker: {error}; valid keys are max_gap, max_cost, "
                                 "pose_weight, pcutoff.") from None
        if not RecordingInfo & recording_key:
            raise ValueError(f"No RecordingInfo for {recording_key}; run RecordingInfo.populate() first.")
        relative = ""
        if mode == "trigger" and Model.is_external(model_key):
            raise ValueError(f"{model_key} is an external model without weights: add its task "
                             "with mode='load' and the tool's output file.")
        if mode == "load":
            if output_path is None:
                raise ValueError("mode='load' needs output_path, the DeepLabCut .h5 to import.")
            relative = to_relative(to_full(output_path, _root_dirs), _root_dirs)
        recordings = (RecordingInfo & recording_key).keys()
        if len(recordings) != 1:
            raise ValueError(f"{recording_key} matches {len(recordings)} recordings; give exactly one.")
        key = {**recordings[0], "model_name": (Model & model_key).fetch1("model_name")}
        params: dict = {"batch_size": batch_size}
        if chunk_frames != 2048:
            params["chunk_frames"] = chunk_frames
        if max_animals is not None:
            params["max_animals"] = max_animals
        if tracker:
            params["tracker"] = tracker
        row = {**key, "task_mode": mode, "output_path": relative, "inference_params": params}
        if cls & key:
            existing = (cls & key).fetch1()
            if any(existing[k] != row[k] for k in ("task_mode", "output_path", "inference_params")):
                raise ValueError(f"A different task for {key} exists: {existing['task_mode']!r} "
                                 f"{existing['output_path']!r}; delete it first to change it.")
            return key
        cls.insert1(row)
        return key


@schema
class PoseEstimation(RecoverJobs, dj.Computed):
    """Body-part trajectories of a recording, aligned to ``RecordingInfo.timestamps``."""

    definition = """
    -> PoseEstimationTask
    ---
    pose_frame_count: int32           # equals RecordingInfo.frame_count
    analysis_seconds: float64         # wall time of the network run (0 for load)
    frames_per_second=null: float64   # analysis speed
    analysis_device='': varchar(32)   # cpu | cuda:0 | file (load mode)
    pose_estimation_time=CURRENT_TIMESTAMP: datetime
    """

    class BodyPartPosition(dj.Part):
        definition = """
        -> master
        -> Model.BodyPart
        ---
        x: <npy@main>                 # pixels, one per frame (NaN = not found)
        y: <npy@main>
        likelihood: <npy@main>        # 0..1
        """

    class Individual(dj.Part):
        definition = """
        # an animal of a multi-animal pose estimation: a named individual or a track
        -> master
        individual: varchar(32)       # the name (identity output, loaded file) or track<N>
        ---
        individual_index: int16
        identity_source: varchar(8)   # identity | track | file
        frames_present: int32         # frames where at least one body part was found
        first_frame=null: int32
        last_frame=null: int32
        """

    class IndividualPosition(dj.Part):
        definition = """
        # one body part of one animal of a multi-animal pose estimation
        -> PoseEstimation.Individual
        -> Model.BodyPart
        ---
        x: <npy@main>                 # pixels, one per frame (NaN = not found)
        y: <npy@main>
        likelihood: <npy@main>
        """

    def make_fetch(self, key: dict) -> tuple:
        task = (PoseEstimationTask & key).fetch1()
        files = tuple(r["file_path"] for r in (VideoRecording.File & key).to_dicts(order_by="file_id"))
        return (task["task_mode"], task["output_path"], canonical_json(task["inference_params"] or {}),
                files, int((RecordingInfo & key).fetch1("frame_count")),
                (Model & key).fetch1("weights_sha256"), tuple(Model.bodyparts(key)))

    def make_compute(self, key, mode, output_path, params_json, files, frame_count, _sha, bodyparts):
        params = json.loads(params_json)
        if mode == "load":
            from .io.outputs import read_pose_output

            path = to_full(output_path, _root_dirs)
            out = read_pose_output(path, frame_count)
            pose, file_parts = out.pose, out.bodyparts
            expected = Model.individuals(key)
            if out.individuals and not expected:
                raise ValueError(
                    f"{path} holds {len(out.individuals)} animals ({out.individuals}) but model "
                    f"{key['model_name']!r} is single-animal. Register the file's own model "
                    f"(Model.from_output_file({str(path)!r}, name)) and load it with that.")
            if expected and set(out.individuals) != set(expected):
                raise ValueError(
                    f"{path} has individuals {out.individuals or 'none (one animal)'} but model "
                    f"{key['model_name']!r} expects {expected}; it is another tool run's output.")
            if set(file_parts) != set(bodyparts):
                raise ValueError(f"{path} has body parts {file_parts}; model {key['model_name']} "
                                 f"has {list(bodyparts)}. Load it with a model of the same parts.")
            if len(pose) != frame_count:
                raise ValueError(f"{path} has {len(pose)} frames but the recording has {frame_count}; "
                                 "it belongs to another video or was cut.")
            model_row = (Model & key).fetch1()
            if model_row["source_tool"] != "element-pose" and (
                    out.tool != model_row["source_tool"] or out.scorer != model_row["scorer"]):
                raise ValueError(
                    f"{path} was written by {out.tool} scorer {out.scorer!r}, but model "
                    f"{key['model_name']!r} is {model_row['source_tool']} scorer "
                    f"{model_row['scorer']!r}. Register its own model: "
                    f"Model.from_output_file({str(path)!r}, name).")
            order = [file_parts.index(p) for p in bodyparts]
            if expected:
                pose = pose[:, [out.individuals.index(n) for n in expected]][:, :, order]
                return pose, 0.0, None, "file", expected, "file"
            return pose[:, order], 0.0, None, "file"
        if mode != "trigger":
            raise ValueError(f"Unknown task_mode {mode!r}; use one of {TASK_MODES}.")
        if Model.is_external(key):
            raise ValueError(f"Model {key['model_name']!r} is an external model without weights: "
                             "its task must use mode='load' with the tool's output file.")
        paths = [to_full(f, _root_dirs) for f in files]
        net = Model.load(key)
        if Model.is_multianimal(key):
            return self._analyse_multianimal(key, net, paths, params, frame_count)
        started = time.perf_counter()
        pose, stats = net.predict_video(paths, batch_size=int(params.get("batch_size", 8)),
                                        progress=True, resume_dir=self._resume_dir(key),
                                        chunk_frames=int(params.get("chunk_frames", 2048)))
        seconds = time.perf_counter() - started
        if len(pose) != frame_count:
            raise ValueError(f"Decoded {len(pose)} frames but RecordingInfo says {frame_count}; "
                             "the video files changed since RecordingInfo was populated.")
        return np.asarray(pose, dtype=np.float64), seconds, float(stats.get("fps", len(pose) / seconds)), net.device

    @staticmethod
    def _analyse_multianimal(key: dict, net, paths: list[Path], params: dict,
                             frame_count: int) -> tuple:
        """Detect, track and (with an identity output) name the animals of a recording."""
        from .engine.multianimal import MultiAnimalConfig
        from .engine.tracking import (
            TrackerSettings,
            assign_identities,
            by_identity,
            by_track,
            track,
        )

        if params.get("max_animals"):
            net.settings = MultiAnimalConfig.from_dict(
                {**net.settings.to_dict(), "max_animals": int(params["max_animals"])})
        started = time.perf_counter()
        found, stats = net.predict_video(paths, batch_size=int(params.get("batch_size", 8)),
                                         progress=True)
        if len(found.poses) != frame_count:
            raise ValueError(f"Decoded {len(found.poses)} frames but RecordingInfo says "
                             f"{frame_count}; the video files changed since RecordingInfo was "
                             "populated.")
        ids = track(found.poses, TrackerSettings(**params.get("tracker", {})))
        if found.identity is not None:
            individuals = Model.individuals(key)
            pose = by_identity(found.poses, assign_identities(found.identity, ids),
                               len(individuals))
            source = "identity"
        else:
            pose = by_track(found.poses, ids)
            individuals, source = [f"track{t}" for t in range(pose.shape[1])], "track"
        seconds = time.perf_counter() - started
        return (np.asarray(pose, dtype=np.float64), seconds, float(stats["fps"]), net.device,
                individuals, source)

    def make_insert(self, key, pose, seconds, fps, device, individuals=None,
                    source=None) -> None:
        self.insert1({**key, "pose_frame_count": len(pose), "analysis_seconds": seconds,
                      "frames_per_second": fps, "analysis_device": str(device)[:32]})
        parts = Model.bodyparts(key)
        if individuals is None:
            self.BodyPartPosition.insert(
                {**key, "body_part": part, "x": pose[:, k, 0].copy(), "y": pose[:, k, 1].copy(),
                 "likelihood": pose[:, k, 2].copy()}
                for k, part in enumerate(parts)
            )
        else:
            _insert_individuals(self, key, pose, parts, individuals, source)
        # The checkpointed output of the analysis is in the rows now (removed at commit time
        # would be better, but a leftover folder is only disk space: the next run of this key
        # finds the rows and never reads it).
        shutil.rmtree(self._resume_dir(key), ignore_errors=True)

    @staticmethod
    def _resume_dir(key: dict) -> Path:
        """Where an analysis of ``key`` checkpoints its output: named by everything the output
        depends on, so a changed model, video list or batch size never resumes old chunks."""
        task = (PoseEstimationTask & key).fetch1()
        files = [r["file_path"] for r in (VideoRecording.File & key).to_dicts(order_by="file_id")]
        digest = sha256_json({"key": {k: key[k] for k in PoseEstimationTask.primary_key},
                              "weights": (Model & key).fetch1("weights_sha256"), "files": files,
                              "params": task["inference_params"] or {}})
        return train.get_pose_processed_data_dir() / "pose" / digest[:24]

    @classmethod
    def _one_key(cls, key: dict) -> dict:
        keys = (cls & key).keys()
        if len(keys) != 1:
            raise ValueError(f"Expected one PoseEstimation row for {key}, found {len(keys)}; restrict the key.")
        return keys[0]

    @classmethod
    def pose_array(cls, key: dict, individual: str | None = None) -> tuple[np.ndarray, list[str]]:
        """(frames, bodyparts, 3) array and body-part names of one pose estimation.

        For several animals, ``individual`` picks one (see :meth:`individuals`); all of them
        together come from :meth:`multi_pose_array`.
        """
        key = cls._one_key(key)
        if individual is None and cls.Individual & key:
            raise ValueError(
                f"{key} tracked several animals ({', '.join(cls.individuals(key))}): use "
                "multi_pose_array(key) for all, or pose_array(key, individual=<name>).")
        if individual is not None:
            pose, parts, names = cls.multi_pose_array(key)
            if individual not in names:
                raise ValueError(f"No individual {individual!r} in {key}; it has {names}.")
            return pose[:, names.index(individual)], parts
        return _pose_from_parts(cls.BodyPartPosition, key)

    @classmethod
    def individuals(cls, key: dict) -> list[str]:
        """The animals of one pose estimation in order ([] when it has one animal)."""
        return [r["individual"] for r in
                (cls.Individual & cls._one_key(key)).to_dicts(order_by="individual_index")]

    @classmethod
    def multi_pose_array(cls, key: dict) -> tuple[np.ndarray, list[str], list[str]]:
        """(frames, individuals, bodyparts, 3) array, body parts and individuals; a
        single-animal row gives one individual, ``"animal0"``."""
        key = cls._one_key(key)
        if not cls.Individual & key:
            pose, parts = _pose_from_parts(cls.BodyPartPosition, key)
            return pose[:, None], parts, ["animal0"]
        return _multi_pose_from_parts(cls.IndividualPosition, key, cls.individuals(key))

    @classmethod
    def pose_data(cls, key: dict) -> tuple[np.ndarray, list[str], list[str] | None]:
        """(F, K, 3) pose, parts and None for one animal; (F, I, K, 3), parts, individuals
        for several."""
        key = cls._one_key(key)
        if cls.Individual & key:
            return cls.multi_pose_array(key)
        return (*_pose_from_parts(cls.BodyPartPosition, key), None)

    @classmethod
    def get_trajectory(cls, key: dict, body_parts: Sequence[str] | None = None,
                       index: str = "frame", individuals: Sequence[str] | None = None
                       ) -> pd.DataFrame:
        """Trajectories in DeepLabCut's layout: columns scorer / bodyparts / coords (x, y,
        likelihood) and nothing else, so DeepLabCut and movement read it as it is. With
        several animals: DeepLabCut's multi-animal layout, scorer / individuals / bodyparts /
        coords (``individuals`` picks some).

        ``index="frame"`` (default) numbers the rows by frame; ``index="time"`` labels them
        with the frame times in seconds (``RecordingInfo.timestamps``, also given by
        :meth:`get_timestamps`).
        """
        from .io.dlc import pose_to_dataframe

        key = cls._one_key(key)
        pose, parts, names = cls.pose_data(key)
        if individuals is not None:
            if names is None:
                raise ValueError(f"{key} has one animal; leave individuals out.")
            unknown = sorted(set(individuals) - set(names))
            if unknown:
                raise ValueError(f"Unknown individuals {unknown}; this pose has {names}.")
            pose = pose[:, [names.index(n) for n in individuals]]
            names = list(individuals)
        if body_parts is not None:
            unknown = sorted(set(body_parts) - set(parts))
            if unknown:
                raise ValueError(f"Unknown body parts {unknown}; this model has {parts}.")
            pose = pose[..., [parts.index(p) for p in body_parts], :]
            parts = list(body_parts)
        scorer = (Model & key).fetch1("scorer")
        if index == "frame":
            rows = pd.RangeIndex(len(pose), name="frame")
        elif index == "time":
            rows = pd.Index(cls.get_timestamps(key), name="time")
        else:
            raise ValueError(f"index must be 'frame' or 'time', got {index!r}.")
        return pose_to_dataframe(pose, parts, scorer, index=rows, individuals=names)

    @classmethod
    def get_timestamps(cls, key: dict) -> np.ndarray:
        """Time of each frame in seconds, from ``RecordingInfo.timestamps``."""
        return np.asarray((RecordingInfo & cls._one_key(key)).fetch1("timestamps"), dtype=float)

    @classmethod
    def export_dlc(cls, key: dict, path: str | Path) -> tuple[Path, Path]:
        """Write DeepLabCut-format ``.h5`` (key ``df_with_missing``) and ``.csv`` files (the
        multi-animal layout for several animals)."""
        from .io.dlc import write_dlc_output

        key = cls._one_key(key)
        pose, parts, names = cls.pose_data(key)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_dlc_output(path, pose, parts, (Model & key).fetch1("scorer"),
                                individuals=names)

# --- derived outputs: filtering, labeled videos, NWB ----------------------------------------


@schema
class PoseFilterParamSet(dj.Lookup):
    """Parameters of :func:`element_pose.filtering.filter_pose`, deduplicated by content."""

    definition = """
    filter_paramset_id: int16
    ---
    filter_description='': varchar(1000)
    params: json                      # full FilterParams (defaults filled in)
    params_sha256: char(64)
    unique index (params_sha256)
    """

    @classmethod
    def insert_new_params(cls, params: dict, filter_paramset_id: int | None = None,
                          description: str = "") -> dict:
        """Validate and insert filter parameters; returns the key (see TrainingParamSet)."""
        from .filtering import FilterParams

        if not isinstance(params, dict):
            raise TypeError(f"params must be a dict, got {type(params).__name__}.")
        full = FilterParams.from_dict(params).to_dict()
        return train.insert_hashed_params(cls, "filter_paramset_id", full, filter_paramset_id,
                                          {"filter_description": description},
                                          lambda p: FilterParams.from_dict(p).to_dict())


@schema
class FilteredPose(RecoverJobs, dj.Computed):
    """Pose after confidence cut-off, jump rejection, gap interpolation and smoothing."""

    definition = """
    -> PoseEstimation
    -> PoseFilterParamSet
    ---
    frames_removed: int32             # points set to NaN by the cut-off and jump rejection
    frames_filled: int32              # points filled by interpolation
    """

    class BodyPartPosition(dj.Part):
        definition = """
        -> master
        -> Model.BodyPart
        ---
        x: <npy@main>
        y: <npy@main>
        likelihood: <npy@main>
        """

    class IndividualPosition(dj.Part):
        definition = """
        # one body part of one animal, filtered (multi-animal pose: each track on its own)
        -> master
        -> PoseEstimation.Individual
        -> Model.BodyPart
        ---
        x: <npy@main>
        y: <npy@main>
        likelihood: <npy@main>
        """

    def make(self, key: dict) -> None:
        from .filtering import filter_pose

        pose, parts, names = PoseEstimation.pose_data(key)
        params = (PoseFilterParamSet & key).fetch1("params")
        if names is None:
            filtered = filter_pose(pose, params)
        else:  # each animal's track on its own
            filtered = np.stack([filter_pose(pose[:, i], params) for i in range(len(names))],
                                axis=1)
        raw_valid = np.isfinite(pose[..., 0])
        new_valid = np.isfinite(filtered[..., 0])
        self.insert1({**key, "frames_removed": int((raw_valid & ~new_valid).sum()),
                      "frames_filled": int((~raw_valid & new_valid).sum())})
        if names is None:
            self.BodyPartPosition.insert(
                {**key, "body_part": p, "x": filtered[:, k, 0].copy(),
                 "y": filtered[:, k, 1].copy(), "likelihood": filtered[:, k, 2].copy()}
                for k, p in enumerate(parts))
        else:
            self.IndividualPosition.insert(
                {**key, "individual": n, "body_part": p, "x": filtered[:, i, k, 0].copy(),
                 "y": filtered[:, i, k, 1].copy(), "likelihood": filtered[:, i, k, 2].copy()}
                for i, n in enumerate(names) for k, p in enumerate(parts))

    @classmethod
    def _one_key(cls, key: dict) -> dict:
        keys = (cls & key).keys()
        if len(keys) != 1:
            raise ValueError(f"Expected one FilteredPose row, found {len(keys)}; restrict the key.")
        return keys[0]

    @classmethod
    def pose_array(cls, key: dict) -> tuple[np.ndarray, list[str]]:
        """(frames, bodyparts, 3) filtered array and body-part names of one row."""
        key = cls._one_key(key)
        if cls.IndividualPosition & key:
            raise ValueError(f"{key} holds several animals: use FilteredPose.pose_data(key).")
        return _pose_from_parts(cls.BodyPartPosition, key)

    @classmethod
    def pose_data(cls, key: dict) -> tuple[np.ndarray, list[str], list[str] | None]:
        """Like :meth:`PoseEstimation.pose_data`, filtered."""
        key = cls._one_key(key)
        if cls.IndividualPosition & key:
            return _multi_pose_from_parts(cls.IndividualPosition, key,
                                          PoseEstimation.individuals(key))
        return (*_pose_from_parts(cls.BodyPartPosition, key), None)


def _pose_from_parts(part: dj.Table, key: dict) -> tuple[np.ndarray, list[str]]:
    parts = Model.bodyparts(key)
    rows = {r["body_part"]: r for r in (part & key).to_dicts()}
    pose = np.stack([np.stack([np.asarray(rows[p][c], dtype=np.float64) for c in ("x", "y", "likelihood")],
                              axis=-1) for p in parts], axis=1)
    return pose, parts


def _multi_pose_from_parts(part: dj.Table, key: dict, individuals: list[str]
                           ) -> tuple[np.ndarray, list[str], list[str]]:
    parts = Model.bodyparts(key)
    rows = {(r["individual"], r["body_part"]): r for r in (part & key).to_dicts()}
    pose = np.stack([np.stack([np.stack([np.asarray(rows[(n, p)][c], dtype=np.float64)
                                         for c in ("x", "y", "likelihood")], axis=-1)
                               for p in parts], axis=1) for n in individuals], axis=1)
    return pose, parts, individuals


def _insert_individuals(table: PoseEstimation, key: dict, pose: np.ndarray, parts: list[str],
                        individuals: list[str], source: str) -> None:
    """The Individual and IndividualPosition rows of a multi-animal pose (F, I, K, 3)."""
    rows = []
    for i, name in enumerate(individuals):
        seen = np.flatnonzero(np.isfinite(pose[:, i, :, 0]).any(axis=1))
        rows.append({**key, "individual": name, "individual_index": i,
                     "identity_source": source, "frames_present": int(len(seen)),
                     "first_frame": int(seen[0]) if len(seen) else None,
                     "last_frame": int(seen[-1]) if len(seen) else None})
    table.Individual.insert(rows)
    table.IndividualPosition.insert(
        {**key, "individual": n, "body_part": p, "x": pose[:, i, k, 0].copy(),
         "y": pose[:, i, k, 1].copy(), "likelihood": pose[:, i, k, 2].copy()}
        for i, n in enumerate(individuals) for k, p in enumerate(parts))


@schema
class LabeledVideoTask(dj.Manual):
    """Which labeled video to render: raw pose, or pose filtered with a parameter set."""

    definition = """
    -> PoseEstimation
    video_id: int16
    ---
    -> [nullable] PoseFilterParamSet  # NULL: raw pose
    pcutoff=0.6: float64              # points below are hidden (or faded)
    hide_below_cutoff=1: bool         # 0: draw them faded
    draw_skeleton=1: bool             # edges of the training dataset's skeleton
    """


@schema
class LabeledVideo(RecoverJobs, dj.Computed):
    """The recording re-encoded with each body part drawn in its own colour."""

    definition = """
    -> LabeledVideoTask
    ---
    video: <object@main>              # mp4
    video_frame_count: int32
    video_width: int32
    video_height: int32
    """

    def make_fetch(self, key: dict) -> tuple:
        # Everything make_compute uses, or the hash of it (docs/design.md, "three-part make").
        task = (LabeledVideoTask & key).fetch1()
        files = tuple(r["file_path"] for r in (VideoRecording.File & key).to_dicts(order_by="file_id"))
        filter_id = task["filter_paramset_id"]
        if filter_id is None:
            pose, parts, _ = PoseEstimation.pose_data(key)
        else:
            filtered = {**PoseEstimation._one_key(key), "filter_paramset_id": filter_id}
            if not FilteredPose & filtered:
                raise ValueError(f"No FilteredPose for {filtered}; run FilteredPose.populate() first.")
            pose, parts, _ = FilteredPose.pose_data(filtered)
        skeleton = tuple(tuple(e) for e in Model.skeleton(key)) if task["draw_skeleton"] else ()
        info = (RecordingInfo & key).fetch1()
        return (filter_id, float(task["pcutoff"]), bool(task["hide_below_cutoff"]), skeleton,
                files, tuple(parts), sha256_bytes(np.ascontiguousarray(pose).tobytes()),
                # H.264 frames have even sizes: odd ones are padded by one pixel
                (int(info["frame_count"]), int(info["px_width"]) + int(info["px_width"]) % 2,
                 int(info["px_height"]) + int(info["px_height"]) % 2))

    def make_compute(self, key, filter_id, pcutoff, hide, skeleton, files, parts, pose_sha,
                     size) -> tuple:
        import tempfile

        from .labeled_video import write_labeled_video

        # The pose again, checked against the hash make_fetch took of it.
        if filter_id is None:
            pose, _, _ = PoseEstimation.pose_data(key)
        else:
            pose, _, _ = FilteredPose.pose_data({**PoseEstimation._one_key(key),
                                                 "filter_paramset_id": filter_id})
        if sha256_bytes(np.ascontiguousarray(pose).tobytes()) != pose_sha:
            raise ValueError(f"The pose of {key} changed while its labeled video was prepared; "
                             "populate again.")
        folder = Path(tempfile.mkdtemp(prefix="element_pose_video_"))
        out = folder / "labeled.mp4"
        try:
            write_labeled_video([to_full(f, _root_dirs) for f in files], pose, list(parts), out,
                                pcutoff=pcutoff, skeleton=[tuple(e) for e in skeleton],
                                hide_below_cutoff=hide, progress=True)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return (str(out), *size)

    def make_insert(self, key, path, frame_count, width, height) -> None:
        try:
            self.insert1({**key, "video": path, "video_frame_count": frame_count, "video_width": width,
                          "video_height": height})
        finally:
            shutil.rmtree(Path(path).parent, ignore_errors=True)  # the store holds it now


def export_nwb(key: dict, path: str | Path, filter_paramset_id: int | None = None,
               overwrite: bool = False, subject: dict | None = None,
               metadata: dict | None = None) -> Path:
    """Export one pose estimation (raw, or filtered with ``filter_paramset_id``) to NWB with
    ndx-pose: PoseEstimation, PoseEstimationSeries, Skeleton, timestamps, the model as source
    software. Refuses an existing ``path`` unless ``overwrite``.

    The subject comes from the upstream ``Subject`` row of the session (``sex``, ``species``,
    ``subject_birth_date`` or ``date_of_birth``, ``subject_description``), completed or
    overridden by ``subject`` (NWB ``Subject`` fields, e.g. ``{"species": "Mus musculus",
    "age": "P90D"}``). DANDI requires species, sex and an age or birth date: when one is
    missing, nothing is written and the error says how to give it. ``metadata`` sets NWBFile
    fields such as ``experimenter``, ``institution``, ``lab``, ``experiment_description``.
    """
    from datetime import datetime

    from . import __version__
    from .io.nwb import export_nwb as write

    key = PoseEstimation._one_key(key)
    if filter_paramset_id is None:
        pose, parts, individuals = PoseEstimation.pose_data(key)
    else:
        pose, parts, individuals = FilteredPose.pose_data(
            {**key, "filter_paramset_id": filter_paramset_id})
    session = (_linking_module.Session & key).fetch1()
    start = session.get("session_datetime") or datetime.now()
    if not isinstance(start, datetime):
        start = datetime.fromisoformat(str(start))
    fields = {**_subject_fields(key, start), **(subject or {})}
    missing = [f for f in ("species", "sex") if not fields.get(f)]
    if not (fields.get("age") or fields.get("date_of_birth")):
        missing.append("age or date_of_birth")
    if missing:
        raise ValueError(
            f"NWB export of {key}: the subject's {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} unknown (DANDI requires them). Add them to "
            "the Subject table (sex, species, subject_birth_date) or pass them, e.g. "
            "subject={'species': 'Mus musculus', 'sex': 'F', 'age': 'P90D'}.")
    info = (RecordingInfo & key).fetch1()
    model_row = (Model & key).fetch1()
    extra = {"session_id": str(session.get("session_id", "")),
             "keywords": ["pose estimation", "behavior"], **(metadata or {})}
    if session.get("session_description"):
        extra.setdefault("experiment_description", session["session_description"])
    return write(
        path, pose, parts, np.asarray(info["timestamps"]), session_start_time=start,
        individuals=individuals,
        skeleton_edges=Model.skeleton(key), subject=fields,
        session_description=session.get("session_description") or f"element-pose {key}",
        source_software="element-pose",
        source_software_version=__version__, model_name=model_row["model_name"],
        scorer=model_row["scorer"], video_paths=VideoRecording.file_paths(key),
        video_frame_counts=info["file_frame_counts"], overwrite=overwrite, nwbfile_fields=extra,
    )


def _subject_fields(key: dict, session_start) -> dict:
    """NWB Subject fields from the upstream Subject row, where the linking module has one."""
    from datetime import date, datetime, time, timezone

    table = getattr(_linking_module, "Subject", None)
    row = (table & key).fetch1() if table is not None and "subject" in key and (table & key) else {}
    out = {"subject_id": str(key.get("subject", row.get("subject", ""))) or None}
    sex = str(row.get("sex") or "").upper()[:1]
    if sex:
        out["sex"] = sex if sex in "MFUO" else "O"
    if row.get("species"):
        out["species"] = str(row["species"])
    birth = row.get("subject_birth_date") or row.get("date_of_birth")
    if birth:
        if isinstance(birth, str):
            birth = date.fromisoformat(birth[:10])
        if isinstance(birth, date) and not isinstance(birth, datetime):
            birth = datetime.combine(birth, time())
        tz = session_start.tzinfo or datetime.now().astimezone().tzinfo or timezone.utc
        out["date_of_birth"] = birth if birth.tzinfo else birth.replace(tzinfo=tz)
    if row.get("subject_description"):
        out["description"] = str(row["subject_description"])
    return {k: v for k, v in out.items() if v is not None}
