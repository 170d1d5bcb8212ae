"""Schema ``train``: body parts, labeled datasets, data splits, training parameters and runs.

Activate with :func:`element_pose.activate` (or :func:`activate` here) and a linking module that
provides ``get_pose_root_data_dir()`` (root data directories) and optionally
``get_pose_processed_data_dir()``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import datajoint as dj
import numpy as np
from tqdm.auto import tqdm

from . import db
from .hashing import canonical_json, sha256_bytes, sha256_file, sha256_json
from .io.labels import LabeledData
from .jobs import RecoverJobs
from .names import check_name, check_names
from .paths import to_relative

logger = logging.getLogger(__name__)

schema = dj.Schema()
_linking_module = None


def activate(
    schema_name: str,
    *,
    create_schema: bool = True,
    create_tables: bool = True,
    linking_module: Any = None,
) -> None:
    """Activate the ``train`` schema.

    Parameters
    ----------
    schema_name : str
        Database schema name.
    linking_module : module or str, optional
        Module (or its name) providing ``get_pose_root_data_dir()``.
    """
    global _linking_module
    if isinstance(linking_module, str):
        linking_module = importlib.import_module(linking_module)
    _linking_module = linking_module
    schema.activate(
        schema_name,
        create_schema=create_schema,
        create_tables=create_tables,
        add_objects=linking_module.__dict__ if linking_module else None,
    )


def get_pose_root_data_dir() -> list[str]:
    """Root data directories from the linking module (empty when it defines none)."""
    fn = getattr(_linking_module, "get_pose_root_data_dir", None)
    return list(fn()) if fn else []


def get_pose_processed_data_dir() -> Path:
    """Folder for work files (training checkpoints); the linking module may override it."""
    fn = getattr(_linking_module, "get_pose_processed_data_dir", None)
    path = Path(fn()) if fn else db.home() / "processed"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _check_name(value: Any, what: str, max_len: int = 64) -> str:
    return check_name(value, what, max_len)


# --- body parts and labeled data -----------------------------------------------------------


@schema
class BodyPart(dj.Lookup):
    """A named body part (keypoint) shared across datasets and models."""

    definition = """
    body_part: varchar(64)
    ---
    body_part_description='': varchar(1000)
    """


@schema
class LabeledDataset(dj.Manual):
    """Human-labeled frames: images in the object store, keypoints in rows."""

    definition = """
    dataset: varchar(64)              # short unique name
    ---
    source_format: varchar(16)        # dlc | sleap | generated
    source_path: varchar(1000)        # where it was imported from (relative to a root when possible)
    scorer='': varchar(64)
    labeled_frame_count: int32
    bodyparts_sha256: char(64)        # sha256 of the sorted body-part names; matches models to data
    content_sha256: char(64)          # sha256 of labels + image bytes; detects re-imports
    skeleton: json                    # list of [body_part, body_part] edges
    dataset_description='': varchar(1000)
    """

    class BodyPart(dj.Part):
        definition = """
        -> master
        -> BodyPart
        ---
        part_index: int16             # position on the keypoint axis
        """

    class Individual(dj.Part):
        definition = """
        -> master
        individual: varchar(32)
        ---
        individual_index: int16
        """

    class Frame(dj.Part):
        definition = """
        -> master
        frame_id: int32               # position in the dataset, 0-based
        ---
        frame_name: varchar(255)      # e.g. labeled-data/m4s1/img0001.png
        image: <object@main>          # PNG/JPEG bytes as labeled
        image_sha256: char(64)
        width: int32
        height: int32
        source_video='': varchar(255)
        source_frame_index=null: int32
        """

    class Label(dj.Part):
        definition = """
        -> master.Frame
        -> master.Individual
        -> master.BodyPart
        ---
        x=null: float64               # pixels; NULL = not visible
        y=null: float64
        """

    # -- import ------------------------------------------------------------------------------

    @classmethod
    def import_dlc(cls, project_dir: str | Path, name: str, description: str = "") -> dict:
        """Import a DeepLabCut project's labeled frames.

        Parameters
        ----------
        project_dir : str or Path
            Folder with config.yaml and labeled-data/*/CollectedData_*.csv (or .h5).
        name : str
            Dataset name (primary key).
        description : str

        Returns
        -------
        dict
            The dataset key. Importing the same content under the same name again is a no-op
            that logs so and returns the existing key.
        """
        from .io.dlc import read_dlc_project

        _check_name(name, "name")
        data = read_dlc_project(project_dir)
        return cls.import_labels(data, name, source_format="dlc", description=description)

    @classmethod
    def import_sleap(cls, path: str | Path, name: str, description: str = "",
                     frames: Sequence[int] | slice | None = None,
                     include_predicted: bool = False) -> dict:
        """Import labels from a SLEAP ``.slp`` file (individuals and tracks kept).

        ``frames`` selects a subset of the labeled frames (positions in the file).
        ``include_predicted`` also takes predicted instances where a frame has no user
        instance (proofread predictions, as in sleap-anipose sessions).
        """
        from .io.sleap import read_sleap

        _check_name(name, "name")
        data = read_sleap(path, frames=frames, include_predicted=include_predicted)
        if len(data) == 0 and not include_predicted:
            predicted = read_sleap(path, frames=frames, include_predicted=True)
            if len(predicted):
                raise ValueError(
                    f"{path} has no user-labeled instances, only {len(predicted)} frames of "
                    "predictions. To use them as labels (e.g. proofread predictions), pass "
                    "include_predicted=True; to store them as pose estimates, register the model "
                    "with model.Model.from_output_file and add a PoseEstimationTask with "
                    "mode='load'.")
        return cls.import_labels(data, name, source_format="sleap", description=description)

    @classmethod
    def import_labels(cls, data: LabeledData, name: str, source_format: str = "generated",
                      description: str = "", also_insert: Any = None) -> dict:
        """Insert a :class:`LabeledData` in one transaction (all rows or none).

        ``also_insert(key)``, when given, runs inside that transaction after the labels are
        inserted (e.g. to record a new version's lineage with them).
        """
        _check_name(name, "name")
        if len(data) == 0:
            raise ValueError(f"No labeled frames to import as {name!r} (from "
                             f"{data.source or 'the given labels'}); label frames first.")
        # Within a dataset names must differ for every collation; across datasets, MySQL makes
        # 'Head' and 'head' one body part (as it compares them), PostgreSQL two.
        check_names(data.bodyparts, "body part", 64)
        check_names(data.individuals, "individual", 32)
        check_names([f.name for f in data.frames], "frame name", 255)
        for frame in data.frames:
            if frame.source_video:
                check_name(frame.source_video, "source video", 255)
        key = {"dataset": name}
        blobs = []
        for frame in tqdm(data.frames, desc=f"read {name} frames", unit="frame", leave=False):
            blobs.append(_encode_frame(frame))
        _check_inside_images(data, [size for _, _, size, _ in blobs])
        content = sha256_json({
            "bodyparts": data.bodyparts,
            "individuals": data.individuals,
            "frames": [f.name for f in data.frames],
            "images": [sha for _, sha, _, _ in blobs],
            "keypoints": np.round(np.nan_to_num(data.keypoints, nan=-1.0), 6).tolist(),
        })
        existing = cls & key
        if existing:
            if existing.fetch1("content_sha256") == content and also_insert is None:
                logger.warning("Dataset %r is already imported with the same labels; nothing to do.", name)
                return key
            raise ValueError(
                f"A different dataset named {name!r} already exists. Choose another name, or "
                f"delete the old one first: (LabeledDataset & {key}).delete()."
            )

        try:
            cls._insert_labels(key, data, blobs, content, source_format, description, also_insert)
        except BaseException:
            # The rows rolled back, but the images were already written to the store.
            from .storage import remove_uncommitted

            remove_uncommitted(cls.Frame, key)
            raise
        logger.info("Imported dataset %r: %d frames, %d body parts.", name, len(data), len(data.bodyparts))
        return key

    @classmethod
    def _insert_labels(cls, key: dict, data: LabeledData, blobs: list, content: str,
                       source_format: str, description: str, also_insert: Any = None) -> None:
        source = to_relative(data.source, get_pose_root_data_dir) if data.source else ""
        with cls.connection.transaction:
            BodyPart.insert(({"body_part": b} for b in data.bodyparts), skip_duplicates=True)
            cls.insert1({
                **key,
                "source_format": source_format,
                "source_path": source,
                "scorer": data.scorer[:64],
                "labeled_frame_count": len(data),
                "bodyparts_sha256": bodyparts_sha256(data.bodyparts),
                "content_sha256": content,
                "skeleton": [list(edge) for edge in data.skeleton],
                "dataset_description": description,
            })
            cls.BodyPart.insert({**key, "body_part": b, "part_index": i} for i, b in enumerate(data.bodyparts))
            cls.Individual.insert(
                {**key, "individual": ind, "individual_index": i} for i, ind in enumerate(data.individuals)
            )
            cls.Frame.insert(
                {
                    **key,
                    "frame_id": i,
                    "frame_name": frame.name,
                    "image": (ext, payload),
                    "image_sha256": sha,
                    "width": width,
                    "height": height,
                    "source_video": frame.source_video or (Path(frame.video_path).name if frame.video_path else ""),
                    "source_frame_index": frame.frame_index,
                }
                for i, (frame, (payload, sha, (width, height), ext)) in enumerate(zip(data.frames, blobs, strict=True))
            )
            rows = []
            for i in range(len(data)):
                for j, ind in enumerate(data.individuals):
                    for k, part in enumerate(data.bodyparts):
                        x, y = data.keypoints[i, j, k]
                        visible = bool(np.isfinite(x) and np.isfinite(y))
                        rows.append({**key, "frame_id": i, "individual": ind, "body_part": part,
                                     "x": float(x) if visible else None, "y": float(y) if visible else None})
            cls.Label.insert(rows)
            if also_insert is not None:
                also_insert(key)

    # -- read back ---------------------------------------------------------------------------

    @classmethod
    def bodyparts(cls, key: dict) -> list[str]:
        """Body parts of a dataset in keypoint-axis order."""
        rows = (cls.BodyPart & key).to_dicts(order_by="part_index")
        return [r["body_part"] for r in rows]

    @classmethod
    def individuals(cls, key: dict) -> list[str]:
        """Individuals of a dataset in order."""
        return [r["individual"] for r in (cls.Individual & key).to_dicts(order_by="individual_index")]

    @classmethod
    def keypoints(cls, key: dict, frame_ids: Sequence[int] | None = None) -> np.ndarray:
        """Labels as float array (frames, individuals, bodyparts, 2), NaN = not visible.

        Frames are ordered as ``frame_ids`` (default: all, by frame id).
        """
        key = {"dataset": (cls & key).fetch1("dataset")}
        parts = cls.bodyparts(key)
        inds = cls.individuals(key)
        if frame_ids is None:
            frame_ids = [r["frame_id"] for r in (cls.Frame & key).to_dicts(order_by="frame_id")]
        position = {f: i for i, f in enumerate(frame_ids)}
        out = np.full((len(frame_ids), len(inds), len(parts), 2), np.nan)
        part_index = {p: i for i, p in enumerate(parts)}
        ind_index = {p: i for i, p in enumerate(inds)}
        for row in (cls.Label & key).to_dicts():
            i = position.get(row["frame_id"])
            if i is None or row["x"] is None or row["y"] is None:
                continue
            out[i, ind_index[row["individual"]], part_index[row["body_part"]]] = (row["x"], row["y"])
        return out

    @classmethod
    def images(cls, key: dict, frame_ids: Sequence[int], progress: bool = False) -> list[np.ndarray]:
        """Decoded RGB images of the given frames, in that order."""
        key = {"dataset": (cls & key).fetch1("dataset")}
        rows = {r["frame_id"]: r for r in (cls.Frame & key).to_dicts()}  # one query
        images = []
        for frame_id in tqdm(frame_ids, desc="load images", unit="frame", disable=not progress, leave=False):
            row = rows[frame_id]
            payload = row["image"].read()
            if sha256_bytes(payload) != row["image_sha256"]:
                raise ValueError(
                    f"The stored image of frame {row['frame_name']!r} (frame_id {frame_id}) of dataset "
                    f"{key['dataset']!r} does not match its sha256: the object store was "
                    "altered. Restore the store from a backup or re-import the dataset.")
            buffer = np.frombuffer(payload, dtype=np.uint8)
            images.append(cv2.cvtColor(cv2.imdecode(buffer, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
        return images


    @classmethod
    def labeled_data(cls, key: dict) -> tuple[LabeledData, list[bytes], list[dict]]:
        """The dataset as stored: its :class:`LabeledData` (frames named as stored), the
        image bytes of each frame (sha256-checked) and the ``Frame`` rows, in frame order."""
        from .io.labels import FrameSource

        row = (cls & key).fetch1()
        key = {"dataset": row["dataset"]}
        frames = (cls.Frame & key).to_dicts(order_by="frame_id")
        payloads = []
        for frame in frames:
            payload = frame["image"].read()
            if sha256_bytes(payload) != frame["image_sha256"]:
                raise ValueError(
                    f"The stored image of frame {frame['frame_name']!r} of dataset {key['dataset']!r} "
                    "does not match its sha256: the object store was altered. Restore it from a "
                    "backup or re-import the dataset.")
            payloads.append(payload)
        data = LabeledData(
            bodyparts=cls.bodyparts(key), individuals=cls.individuals(key),
            frames=[FrameSource(name=f["frame_name"], source_video=f["source_video"] or None,
                                frame_index=f["source_frame_index"]) for f in frames],
            keypoints=cls.keypoints(key, [f["frame_id"] for f in frames]),
            scorer=row["scorer"], skeleton=[tuple(e) for e in row["skeleton"]],
            source=row["source_path"])
        return data, payloads, frames

    @classmethod
    def export_dlc(cls, key: dict, folder: str | Path) -> Path:
        """Write the dataset as a DeepLabCut project (``config.yaml``, ``labeled-data/<video>/``
        images, ``CollectedData_<scorer>.h5`` and ``.csv``) in a new folder.

        Importing the folder again with :meth:`import_dlc` gives the same labels and images;
        frames imported from DeepLabCut keep their names (others are named
        ``labeled-data/<video>/img<frame index>.png``).
        """
        from .io.dlc import label_frame_name, write_dlc_project

        data, payloads, rows = cls.labeled_data(key)
        names = [label_frame_name(f.name, f.source_video, f.frame_index if f.frame_index is not None
                                  else r["frame_id"], p)
                 for f, r, p in zip(data.frames, rows, payloads, strict=True)]
        if len(set(names)) != len(names):
            names = [label_frame_name("", f.source_video, r["frame_id"], p)
                     for f, r, p in zip(data.frames, rows, payloads, strict=True)]
        for frame, name in zip(data.frames, names, strict=True):
            frame.name = name
        return write_dlc_project(folder, data, payloads, task=f"element-pose-{rows[0]['dataset']}")

    @classmethod
    def export_sleap(cls, key: dict, path: str | Path) -> Path:
        """Write the dataset as SLEAP labels (``.slp`` + its images in ``<stem>.images/``).

        Importing it again with :meth:`import_sleap` gives the same labels and images (frames
        are then named by SLEAP's video / frame index).
        """
        from .io.sleap import write_sleap

        data, payloads, _ = cls.labeled_data(key)
        return write_sleap(path, data, payloads)[0]


def insert_hashed_params(table, id_attr: str, full: dict, params_id: int | None, extra: dict,
                         normalize: Callable[[dict], dict] | None = None) -> dict:
    """Insert validated, defaults-filled ``full`` params into a parameter table deduplicated by
    content; shared by the training, filtering, outlier and triangulation parameter sets.

    The same parameters under the same (or no) id return the existing key; under another id
    they raise an error naming the id that holds them.

    ``normalize`` turns a stored row's ``params`` into its full form under the installed
    version (the same validation that produced ``full``). Rows are matched by it when no row
    has ``full``'s exact hash, so a row stored before a release added a setting (whose default
    keeps the old behaviour) still deduplicates: its stored hash was of the shorter dict.
    """
    digest = sha256_json(full)
    holder = (table & {"params_sha256": digest}).keys()
    if not holder and normalize is not None:
        holder = [key for key, stored in zip(*table.to_arrays(id_attr, "params"), strict=True)
                  if _normalized_or_none(normalize, stored) == full]
        holder = [{id_attr: int(key)} for key in holder]
    if holder:
        if params_id is None or holder[0][id_attr] == params_id:
            return holder[0]
        raise ValueError(f"These parameters are already stored as {id_attr}={holder[0][id_attr]}; "
                         f"use that id instead of {params_id}.")
    if params_id is None:
        params_id = int(max(table.to_arrays(id_attr), default=-1)) + 1
    if isinstance(params_id, bool) or not isinstance(params_id, int):
        raise TypeError(f"{id_attr} must be an int, got {params_id!r}.")
    if table & {id_attr: params_id}:
        raise ValueError(f"{id_attr}={params_id} already holds other parameters; pick a new id.")
    table.insert1({id_attr: params_id, **extra, "params": full, "params_sha256": digest})
    return {id_attr: params_id}


def _normalized_or_none(normalize: Callable[[dict], dict], stored: Any) -> dict | None:
    """``normalize(stored)``, or None for a row the installed version no longer accepts."""
    try:
        if isinstance(stored, str):  # JSON columns come back as text on some backends
            stored = json.loads(stored)
        return normalize(dict(stored))
    except (TypeError, ValueError):  # json.JSONDecodeError is a ValueError
        return None


def bodyparts_sha256(bodyparts: Sequence[str]) -> str:
    """Order-free hash of a body-part set, used to match models with datasets."""
    return sha256_json(sorted(bodyparts))


def _check_inside_images(data: LabeledData, sizes: Sequence[tuple[int, int]]) -> None:
    """Refuse labels outside their image (half a pixel of slack at each border)."""
    for i, (frame, (width, height)) in enumerate(zip(data.frames, sizes, strict=True)):
        pts = data.keypoints[i]
        bad = np.isfinite(pts).all(axis=-1) & (
            (pts[..., 0] < -0.5) | (pts[..., 0] > width - 0.5)
            | (pts[..., 1] < -0.5) | (pts[..., 1] > height - 0.5))
        if bad.any():
            j, k = np.argwhere(bad)[0]
            x, y = pts[j, k]
            raise ValueError(
                f"Label outside its image in {data.source or 'the labels'}: frame "
                f"{frame.name!r}, body part {data.bodyparts[k]!r}"
                + (f" of {data.individuals[j]!r}" if len(data.individuals) > 1 else "")
                + f" at x={x:g}, y={y:g}, but the image is {width}x{height}. Fix the label "
                "(or delete it) in the labeling tool.")


def _encode_frame(frame) -> tuple[bytes, str, tuple[int, int], str]:
    """(bytes, sha256, (width, height), extension) of a frame image; PNG/JPEG files are kept
    byte for byte, video frames are encoded losslessly as PNG."""
    if frame.image_path is not None:
        path = Path(frame.image_path)
        if not path.is_file():
            raise FileNotFoundError(f"Labeled image missing: {path}. Restore it or drop its labels.")
        payload = path.read_bytes()
        image = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"{path} is not a readable image (corrupt or wrong format). Re-export it.")
        ext = path.suffix.lower() or ".png"
    else:
        rgb = frame.read()
        image = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        ok, encoded = cv2.imencode(".png", image)
        if not ok:
            raise ValueError(f"Cannot encode frame {frame.name} as PNG.")
        payload, ext = encoded.tobytes(), ".png"
    height, width = image.shape[:2]
    return payload, sha256_bytes(payload), (width, height), ext


# --- data splits --------------------------------------------------------------------------


@schema
class DataSplit(dj.Manual):
    """A train/test assignment of a dataset's frames."""

    definition = """
    -> LabeledDataset
    split_id: int16
    ---
    split_method: varchar(16)         # random | lists | extend
    test_fraction: float64
    seed=null: int32
    split_sha256: char(64)            # hash of the sorted train and test frame names
    """

    class Frame(dj.Part):
        definition = """
        -> master
        -> LabeledDataset.Frame
        ---
        subset: varchar(5)            # train | test
        """

    @classmethod
    def random(cls, dataset_key: dict, test_fraction: float = 0.2, seed: int = 0) -> dict:
        """Split a dataset at random; returns the split key (an existing identical split's key
        when there is one)."""
        if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)):
            raise TypeError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}.")
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}.")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}.")
        names = cls._frame_names(dataset_key)
        order = np.random.default_rng(seed).permutation(len(names))
        n_test = max(1, int(round(test_fraction * len(names))))
        if n_test >= len(names):
            raise ValueError(f"{len(names)} frames are too few to hold out {test_fraction:.0%} for testing.")
        test = [names[i] for i in order[:n_test]]
        train = [names[i] for i in order[n_test:]]
        return cls._insert_split(dataset_key, train, test, "random", seed)

    @classmethod
    def from_lists(cls, dataset_key: dict, train: Sequence[str], test: Sequence[str]) -> dict:
        """Split by explicit frame names (image paths as in the DLC CSV); returns the split key."""
        return cls._insert_split(dataset_key, list(train), list(test), "lists", None)

    @classmethod
    def from_split_json(cls, dataset_key: dict, path: str | Path) -> dict:
        """Split from a ``split.json`` file holding ``{"train": [...], "test": [...]}``."""
        import json

        spec = json.loads(Path(path).read_text())
        if not isinstance(spec, dict) or not {"train", "test"} <= set(spec):
            raise ValueError(f"{path} must hold a JSON object with 'train' and 'test' lists.")
        return cls.from_lists(dataset_key, spec["train"], spec["test"])

    @classmethod
    def extend(cls, split_key: dict, dataset_key: dict, test_fraction: float = 0.0,
               seed: int = 0) -> dict:
        """Split a new version of a dataset so that the earlier split still holds.

        Frames of ``split_key``'s dataset keep their subset (matched by frame name, so a test
        frame never moves into training); frames new in ``dataset_key`` go to training, or
        ``test_fraction`` of them (at random, ``seed``) to the test set.
        """
        if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) \
                or not 0 <= test_fraction < 1:
            raise ValueError(f"test_fraction must be a number in [0, 1), got {test_fraction!r}.")
        old = (cls.Frame & split_key) * LabeledDataset.Frame
        subset = {r["frame_name"]: r["subset"] for r in old.proj("subset", "frame_name").to_dicts()}
        if not subset:
            raise ValueError(f"No data split {split_key}; create it first.")
        names = cls._frame_names(dataset_key)
        missing = sorted(set(subset) - set(names))
        if missing:
            raise ValueError(f"{len(missing)} frame(s) of the earlier split are not in "
                             f"{dataset_key}, e.g. {missing[:3]}: it is not a later version of "
                             "that dataset.")
        new = [n for n in names if n not in subset]
        order = np.random.default_rng(seed).permutation(len(new))
        n_test = int(round(test_fraction * len(new)))
        test = [n for n in subset if subset[n] == "test"] + [new[i] for i in order[:n_test]]
        train = [n for n in subset if subset[n] == "train"] + [new[i] for i in order[n_test:]]
        return cls._insert_split(dataset_key, train, test, "extend", seed)

    @classmethod
    def _frame_names(cls, dataset_key: dict) -> list[str]:
        frames = (LabeledDataset.Frame & dataset_key).to_dicts(order_by="frame_id")
        if not frames:
            raise ValueError(f"No labeled dataset {dataset_key}; import it first.")
        return [f["frame_name"] for f in frames]

    @classmethod
    def _insert_split(cls, dataset_key: dict, train: list[str], test: list[str], method: str,
                      seed: int | None) -> dict:
        dataset = {"dataset": (LabeledDataset & dataset_key).fetch1("dataset")}
        frames = {f["frame_name"]: f["frame_id"] for f in (LabeledDataset.Frame & dataset).to_dicts()}
        for label, names in (("train", train), ("test", test)):
            if not all(isinstance(n, str) for n in names):
                raise TypeError(f"{label} must be a list of frame names (str).")
            unknown = [n for n in names if n not in frames]
            if unknown:
                raise ValueError(
                    f"{len(unknown)} {label} frame(s) are not in dataset {dataset['dataset']!r}, "
                    f"e.g. {unknown[:3]}. Use names as in LabeledDataset.Frame.frame_name."
                )
        for label, names in (("train", train), ("test", test)):
            if len(set(names)) != len(names):
                dupes = sorted({n for n in names if names.count(n) > 1})
                raise ValueError(f"{label} lists {len(dupes)} frame(s) twice, e.g. {dupes[:3]}.")
        overlap = sorted(set(train) & set(test))
        if overlap:
            raise ValueError(f"{len(overlap)} frame(s) are in both train and test, e.g. {overlap[:3]}.")
        if not train or not test:
            raise ValueError("A split needs at least one train and one test frame.")
        digest = sha256_json({"train": sorted(train), "test": sorted(test)})
        same = cls & dataset & {"split_sha256": digest}
        if same:
            return same.keys(order_by="split_id")[0]
        ids = (cls & dataset).to_arrays("split_id")
        key = {**dataset, "split_id": int(max(ids, default=-1)) + 1}
        with cls.connection.transaction:
            cls.insert1({**key, "split_method": method, "test_fraction": len(test) / (len(train) + len(test)),
                         "seed": seed, "split_sha256": digest})
            cls.Frame.insert(
                [{**key, "frame_id": frames[n], "subset": "train"} for n in train]
                + [{**key, "frame_id": frames[n], "subset": "test"} for n in test]
            )
        return key

    @classmethod
    def frame_ids(cls, split_key: dict, subset: str) -> list[int]:
        """Frame ids of ``subset`` ('train' or 'test'), sorted."""
        if subset not in ("train", "test"):
            raise ValueError(f"subset must be 'train' or 'test', got {subset!r}.")
        rows = (cls.Frame & split_key & {"subset": subset}).to_dicts(order_by="frame_id")
        return [r["frame_id"] for r in rows]


# --- training ----------------------------------------------------------------------------


@schema
class TrainingParamSet(dj.Lookup):
    """Engine training parameters, validated and deduplicated by content."""

    definition = """
    paramset_id: int16
    ---
    paramset_description='': varchar(1000)
    params: json                      # full engine config (defaults filled in)
    params_sha256: char(64)           # sha256 of the canonical JSON
    unique index (params_sha256)
    """

    @classmethod
    def insert_new_params(cls, params: dict, paramset_id: int | None = None,
                          description: str = "") -> dict:
        """Validate ``params`` with the engine config and insert them.

        Returns the key. The same parameters under the same id are a no-op; under another id
        they raise an error naming the id that already holds them.
        """
        if not isinstance(params, dict):
            raise TypeError(f"params must be a dict, got {type(params).__name__}.")
        return insert_hashed_params(cls, "paramset_id", full_params(params), paramset_id,
                                    {"paramset_description": description}, full_params)


def full_params(params: dict) -> dict:
    """Training params validated, with every default filled in (the stored form)."""
    config, multi = split_params(params)
    full = config.to_dict()
    if multi is not None:
        full["multianimal"] = multi.to_dict()
    return full


def split_params(params: dict):
    """Training params as (EngineConfig, MultiAnimalConfig or None), both validated.

    The optional ``"multianimal"`` section holds the settings of multi-animal models
    (:class:`element_pose.engine.multianimal.MultiAnimalConfig`); without it a multi-animal
    dataset trains with its defaults.
    """
    from .engine.config import EngineConfig
    from .engine.multianimal import MultiAnimalConfig

    params = dict(params)
    multi = params.pop("multianimal", None)
    config = EngineConfig.from_dict(params)
    return config, (None if multi is None else MultiAnimalConfig.from_dict(multi))


@schema
class TrainingTask(dj.Manual):
    """A request to train: data split × parameter set × run."""

    definition = """
    -> DataSplit
    -> TrainingParamSet
    run_id=0: int16                   # repeat runs: run r trains with seed = params seed + r
    ---
    task_description='': varchar(1000)
    """


@schema
class ModelTraining(RecoverJobs, dj.Computed):
    """A training run of the bundled engine. Trains outside any database transaction.

    ``config`` is the configuration actually used: every ``"auto"`` value of the parameter
    set resolved from the training frames (``auto_report`` says from what and why), so
    inserting it as a new ``TrainingParamSet`` reproduces the model.
    """

    definition = """
    -> TrainingTask
    ---
    weights: <object@main>            # self-contained checkpoint (.pt), the best snapshot
    weights_sha256: char(64)
    learning_curve: <npy@main>        # (n, 2): iteration, training loss
    validation_curve: <npy@main>      # (n, 2): iteration, mean error (px, each capped at 1/4 animal) on held-back frames
    iterations: int32                 # iterations run
    best_iteration: int32             # iteration of the kept snapshot
    config: json                      # resolved engine config (no "auto" left)
    auto_report: json                 # dataset statistics and why each automatic value was chosen
    train_seconds: float64
    training_device: varchar(32)     # cpu | cuda:0 ...
    versions: json                    # library versions used
    trained_at=CURRENT_TIMESTAMP: datetime
    """

    def make_fetch(self, key: dict) -> tuple:
        # Plain, small values: DataJoint hashes them twice to detect changes during training.
        params = (TrainingParamSet & key).fetch1("params")
        dataset = (LabeledDataset & (DataSplit & key)).fetch1()
        frame_ids = DataSplit.frame_ids(key, "train")
        keypoints = LabeledDataset.keypoints({"dataset": dataset["dataset"]}, frame_ids)
        init = initial_model(key)
        fingerprint = sha256_json({
            "params": params, "data": dataset["content_sha256"],
            "split": (DataSplit & key).fetch1("split_sha256"), "run_id": int(key["run_id"]),
            "labels": sha256_bytes(np.nan_to_num(keypoints, nan=-1.0).tobytes()),
            "init": init["weights_sha256"] if init else None,
        })
        return canonical_json(params), tuple(frame_ids), fingerprint

    def make_compute(self, key, params_json, frame_ids, fingerprint) -> tuple:
        import json

        from .engine.multianimal import MultiAnimalConfig, train_multianimal
        from .engine.train import train

        dataset = {"dataset": (DataSplit & key).fetch1("dataset")}
        keypoints = LabeledDataset.keypoints(dataset, frame_ids)
        config, multi = split_params(json.loads(params_json))
        individuals = LabeledDataset.individuals(dataset)
        init = initial_model(key)
        if keypoints.shape[1] == 1 and multi is not None:
            raise ValueError(
                f"Parameter set {key['paramset_id']} has multi-animal settings but dataset "
                f"{dataset['dataset']} labels one animal; train it with a parameter set "
                "without the 'multianimal' section.")
        if keypoints.shape[1] > 1 and init:
            raise ValueError("Fine-tuning (TrainingInit) is for single-animal models; "
                             f"dataset {dataset['dataset']} labels {keypoints.shape[1]} animals.")
        images = LabeledDataset.images(dataset, frame_ids, progress=True)
        # Repeat runs differ by seed; the default run 0 keeps the configured seed.
        config = config.replace(seed=config.seed + int(key["run_id"]))
        # The work folder (resumable checkpoints) is named by everything the result depends
        # on, so a re-imported dataset or a new split never resumes an old run.
        workdir = get_pose_processed_data_dir() / "training" / fingerprint[:24]
        if keypoints.shape[1] > 1:
            result = train_multianimal(images, keypoints, LabeledDataset.bodyparts(dataset),
                                       individuals, config, multi or MultiAnimalConfig(),
                                       workdir, progress=True)
        else:
            result = train(images, keypoints[:, 0], LabeledDataset.bodyparts(dataset), config,
                           workdir=workdir, progress=True,
                           init_checkpoint=init["path"]() if init else None)
        report = dict(result.auto_report)
        if init:  # provenance by name, not by a local cache path
            report["initial_model"] = {**report.get("initial_model", {}),
                                       "path": None, "model_name": init["model_name"]}
        return (str(result.checkpoint_path), sha256_file(result.checkpoint_path), {
            "learning_curve": np.asarray(result.learning_curve, dtype=np.float64),
            "validation_curve": np.asarray(result.validation_curve, dtype=np.float64),
            "iterations": int(result.iterations), "best_iteration": int(result.best_iteration),
            "config": result.config, "auto_report": report,
            "train_seconds": float(result.train_seconds), "training_device": str(result.device),
            "versions": dict(result.versions)})

    def make_insert(self, key, weights_path, sha, values) -> None:
        self.insert1({**key, "weights": weights_path, "weights_sha256": sha, **values})
        # The weights are in the object store now; the resumable checkpoints are not needed.
        shutil.rmtree(Path(weights_path).parent, ignore_errors=True)


def initial_model(key: dict) -> dict | None:
    """The stored model a training task starts from (``model.TrainingInit``), if any.

    Returns ``{"model_name", "weights_sha256", "path"}`` where ``path()`` fetches a verified
    local copy of its weights, or None when the task trains from its configured start.
    """
    from . import model as model_module

    if not model_module.schema.is_activated():
        return None
    rows = (model_module.TrainingInit & {k: key[k] for k in TrainingTask.primary_key}).to_dicts()
    if not rows:
        return None
    parent = {"model_name": rows[0]["parent_model"]}
    sha = (model_module.Model & parent).fetch1("weights_sha256")
    return {"model_name": parent["model_name"], "weights_sha256": sha,
            "path": lambda: fetch_weights(model_module.Model, parent)}


def fetch_weights(table: dj.Table, key: dict) -> Path:
    """A local copy of a row's ``weights`` checkpoint, verified against ``weights_sha256``.

    Copies are cached by hash under ``<ELEMENT_POSE_HOME>/cache/weights`` so repeated
    evaluations and analyses read the object store once.
    """
    row = (table & key).fetch1("weights_sha256")
    target = db.home() / "cache" / "weights" / f"{row}.pt"
    if not target.is_file() or sha256_file(target) != row:
        target.parent.mkdir(parents=True, exist_ok=True)
        # A private temporary name: several workers may fetch the same model at once.
        handle, partial = tempfile.mkstemp(dir=target.parent, suffix=".part")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write((table & key).fetch1("weights").read())
            if sha256_file(partial) != row:
                raise ValueError(f"Stored weights of {key} do not match their sha256; the object "
                                 "store is corrupt.")
            os.replace(partial, target)
        finally:
            Path(partial).unlink(missing_ok=True)
    return target


__all__ = [name for name, obj in globals().items()
           if inspect.isclass(obj) and issubclass(obj, dj.Table) and obj.__module__ == __name__]
