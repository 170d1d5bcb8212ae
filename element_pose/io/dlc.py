"""DeepLabCut files: project folders (config.yaml + CollectedData labels) and pose outputs (.h5/.csv).

Reads both label header layouts (single animal: scorer/bodyparts/coords; multi-animal:
scorer/individuals/bodyparts/coords) and both index layouts (one ``labeled-data/v/img.png``
column, or three columns ``labeled-data``, ``v``, ``img.png``).
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .hdf5 import UnsafeFileError, read_hdf, write_hdf
from .labels import FrameSource, LabeledData

logger = logging.getLogger(__name__)

SINGLE = "animal0"  # individual name for single-animal projects


class DLCFormatError(ValueError):
    """A DeepLabCut file that cannot be read as such; the message names the file and the fix."""


def read_config(project_dir: Path) -> dict | None:
    """Return the parsed ``config.yaml`` of a DLC project, or None when there is none."""
    path = Path(project_dir) / "config.yaml"
    if not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise DLCFormatError(f"{path} is not valid YAML ({error}). Fix or restore the file.") from error


def find_label_files(project_dir: Path) -> list[Path]:
    """Label files of a project: ``labeled-data/*/CollectedData_*.csv`` (or ``.h5`` where no
    csv exists beside it), else ``CollectedData*.csv`` at the project root."""
    project_dir = Path(project_dir)
    found: list[Path] = []
    for folder in sorted((project_dir / "labeled-data").glob("*")):
        if not folder.is_dir():
            continue
        csvs = sorted(folder.glob("CollectedData_*.csv"))
        found += csvs or sorted(folder.glob("CollectedData_*.h5"))
    if not found:
        found = sorted(project_dir.glob("CollectedData*.csv")) or sorted(
            project_dir.glob("CollectedData*.h5")
        )
    return found


def _read_label_table(path: Path) -> tuple[list[str], list[tuple[str, str, str]], np.ndarray, str]:
    """Parse one CollectedData file into (image names, columns (individual, bodypart, coord),
    values (rows, columns) float, scorer)."""
    if path.suffix == ".h5":
        frame = read_hdf(path)
        levels = frame.columns.names
        cols = []
        for col in frame.columns:
            named = dict(zip(levels, col, strict=True))
            cols.append((named.get("individuals", SINGLE), named["bodyparts"], named["coords"]))
        index = ["/".join(map(str, i)) if isinstance(i, tuple) else str(i).replace("\\", "/")
                 for i in frame.index]
        scorer = str(frame.columns.get_level_values("scorer")[0])
        return index, cols, frame.to_numpy(dtype=float), scorer

    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    names = [r[0] if r else "" for r in rows[:5]]
    if "coords" not in names or names[0] != "scorer":
        raise DLCFormatError(
            f"{path} is not a DeepLabCut label file: its first column should start with "
            "'scorer', ('individuals',) 'bodyparts', 'coords'. Export labels from DeepLabCut."
        )
    n_header = names.index("coords") + 1
    header = {r[0]: r for r in rows[:n_header]}
    if "bodyparts" not in header or len({len(r) for r in rows[:n_header]}) != 1:
        raise DLCFormatError(f"{path}: the header needs 'scorer', 'bodyparts' and 'coords' rows of "
                             "equal length. Export labels from DeepLabCut again.")
    scorer_row = header["scorer"]
    n_index = 1
    while n_index < len(scorer_row) and scorer_row[n_index] == "":
        n_index += 1
    ncol = len(scorer_row) - n_index
    if ncol < 2:
        raise DLCFormatError(f"{path} has no label columns.")
    individuals = header.get("individuals", [None] * len(scorer_row))
    cols = [
        (individuals[n_index + j] or SINGLE, header["bodyparts"][n_index + j], header["coords"][n_index + j])
        for j in range(ncol)
    ]
    index, values = [], []
    for line, row in enumerate(rows[n_header:], start=n_header + 1):
        if not row or not any(row):
            continue
        # DeepLabCut projects labeled on Windows store backslashes.
        index.append("/".join(c for c in row[:n_index] if c).replace("\\", "/"))
        cells = row[n_index:] + [""] * (ncol - len(row[n_index:]))
        try:
            values.append([float(c) if c.strip() else np.nan for c in cells[:ncol]])
        except ValueError as error:
            raise DLCFormatError(f"{path}, line {line}: a coordinate is not a number ({error}).") from error
    return index, cols, np.asarray(values, dtype=float).reshape(len(index), ncol), scorer_row[n_index]


_FRAME_NUMBER = re.compile(r"(\d+)\.\w+$")


def _check_h5_beside(path: Path, index: list[str], cols: list, values: np.ndarray) -> None:
    """A CollectedData .csv and the .h5 beside it must hold the same labels.

    DeepLabCut writes both; an edit in only one of them (or a stale copy) is an error rather
    than a silent choice, so nothing is trained on labels the labeler did not mean.
    """
    h5 = path.with_suffix(".h5")
    if path.suffix != ".csv" or not h5.is_file():
        return
    h5_index, h5_cols, h5_values, _ = _read_label_table(h5)
    a = {(n, c): v for n, row in zip(index, values, strict=True)
         for c, v in zip(cols, row, strict=True) if c[2] in ("x", "y")}
    b = {(n, c): v for n, row in zip(h5_index, h5_values, strict=True)
         for c, v in zip(h5_cols, row, strict=True) if c[2] in ("x", "y")}
    if set(a) != set(b):
        only = sorted({k[0] for k in set(a) ^ set(b)})[:3]
        raise DLCFormatError(
            f"{path} and {h5.name} list different frames or body parts (e.g. {only}). Re-save "
            "the labels in DeepLabCut so both files agree, or delete the stale one.")
    for k, v in a.items():
        w = b[k]
        if not (np.isnan(v) and np.isnan(w)) and not abs(v - w) <= 1e-3:
            raise DLCFormatError(
                f"{path} and {h5.name} disagree on frame {k[0]!r}, body part {k[1][1]!r}, "
                f"{k[1][2]}: {v} in the csv, {w} in the h5. Re-save the labels in DeepLabCut so "
                "both files agree, or delete the stale one.")


def read_dlc_project(project_dir: str | Path) -> LabeledData:
    """Read the labeled frames of a DeepLabCut project folder.

    Parameters
    ----------
    project_dir : str or Path
        Folder with ``config.yaml`` and ``labeled-data/*/CollectedData_<scorer>.csv`` (or
        ``.h5``); a folder with a root ``CollectedData*.csv`` and no config is accepted too.

    Returns
    -------
    LabeledData

    Raises
    ------
    DLCFormatError
        Missing folder or labels, body parts that disagree with config.yaml, coordinates that
        are not numbers or are infinite, images listed but missing on disk.
    """
    project_dir = Path(project_dir).expanduser()
    if not project_dir.is_dir():
        raise DLCFormatError(
            f"DeepLabCut project folder not found: {project_dir}. Pass the folder that holds "
            "config.yaml and labeled-data/."
        )
    config = read_config(project_dir)
    files = find_label_files(project_dir)
    if not files:
        raise DLCFormatError(
            f"No labels in {project_dir}: expected labeled-data/<video>/CollectedData_<scorer>.csv "
            "(or .h5). Label frames in DeepLabCut first, or point at the right folder."
        )

    names: list[str] = []
    tables = []
    scorer = ""
    for path in files:
        index, cols, values, scorer = _read_label_table(path)
        if not index:
            raise DLCFormatError(
                f"{path} has header rows but no labeled frames. Label frames (or delete the "
                "file) before importing.")
        _check_h5_beside(path, index, cols, values)
        tables.append((path, index, cols, values))
        names += index
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})[:5]
        raise DLCFormatError(f"Frames labeled twice across {[str(f) for f in files]}: {dupes}")

    # Body parts and individuals, in config order when there is a config, else file order.
    file_parts = list(dict.fromkeys(c[1] for t in tables for c in t[2]))
    file_individuals = list(dict.fromkeys(c[0] for t in tables for c in t[2]))
    if config and config.get("multianimalproject"):
        config_parts = list(config.get("multianimalbodyparts") or []) + list(
            config.get("uniquebodyparts") or []
        )
        individuals = list(config.get("individuals") or [])
        if config.get("uniquebodyparts"):
            individuals.append("single")
    elif config:
        config_parts = list(config.get("bodyparts") or [])
        individuals = [SINGLE]
    else:
        config_parts, individuals = file_parts, file_individuals
    if set(file_parts) != set(config_parts):
        extra = sorted(set(file_parts) - set(config_parts))
        missing = sorted(set(config_parts) - set(file_parts))
        raise DLCFormatError(
            f"Body parts in {files[0]} disagree with {project_dir / 'config.yaml'}: "
            f"in the labels but not the config: {extra}; in the config but not the labels: "
            f"{missing}. Make config.yaml's bodyparts list match the labels."
        )
    unknown_ind = sorted(set(file_individuals) - set(individuals))
    if unknown_ind:
        raise DLCFormatError(
            f"Individuals {unknown_ind} in {files[0]} are not in config.yaml's individuals list."
        )
    bodyparts = config_parts

    keypoints = np.full((len(names), len(individuals), len(bodyparts), 2), np.nan)
    frames: list[FrameSource] = []
    row = 0
    for path, index, cols, values in tables:
        if not np.all(np.isfinite(values) | np.isnan(values)):
            raise DLCFormatError(f"{path} holds infinite coordinates; fix or relabel those frames.")
        seen = [c for c in cols if c[2] in ("x", "y")]
        twice = sorted({c for c in seen if seen.count(c) > 1})
        if twice:
            ind, part, _ = twice[0]
            raise DLCFormatError(
                f"{path} labels individual {ind!r} body part {part!r} twice in each frame "
                f"({len(twice)} duplicated column(s)); one individual name must appear once per "
                "frame. Rename the second animal in config.yaml's individuals and the labels.")
        for j, (ind, part, coord) in enumerate(cols):
            if coord not in ("x", "y"):
                continue  # e.g. 'likelihood' columns in machine-labeled files
            keypoints[row : row + len(index), individuals.index(ind), bodyparts.index(part),
                      0 if coord == "x" else 1] = values[:, j]
        row += len(index)
        for name in index:
            number = _FRAME_NUMBER.search(name)
            parts = Path(name).parts
            video = parts[-2] if len(parts) >= 2 and parts[-2] != "labeled-data" else None
            frames.append(FrameSource(
                name=name,
                image_path=project_dir / name,
                source_video=video,
                frame_index=int(number.group(1)) if number and video else None,
            ))
    # A label with only x or only y is as good as none.
    keypoints[np.isnan(keypoints).any(axis=-1)] = np.nan

    missing_images = [f.name for f in frames if not f.image_path.is_file()]
    if missing_images:
        raise DLCFormatError(
            f"{len(missing_images)} labeled image(s) listed in the labels are missing under "
            f"{project_dir}, e.g. {missing_images[:3]}. Restore them, or delete their rows "
            "from the CollectedData file."
        )
    skeleton = [tuple(edge) for edge in (config or {}).get("skeleton") or [] if len(edge) == 2]
    return LabeledData(
        bodyparts=bodyparts,
        individuals=individuals,
        frames=frames,
        keypoints=keypoints,
        scorer=scorer,
        skeleton=skeleton,
        source=str(project_dir),
    )


# --- pose outputs -------------------------------------------------------------------------

def read_dlc_table(path: str | Path) -> pd.DataFrame:
    """A DeepLabCut pose output (.h5 or .csv, single- or multi-animal) as its DataFrame."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DeepLabCut output not found: {path}. Check the path.")
    try:
        if path.suffix == ".h5":
            frame = read_hdf(path)
        else:
            with open(path) as f:
                f.readline()
                multi = f.readline().split(",", 1)[0].strip() == "individuals"
            levels = 4 if multi else 3
            frame = pd.read_csv(path, header=list(range(levels)), index_col=0)
    except UnsafeFileError:
        raise
    except Exception as error:  # pandas/pytables raise many kinds for a bad file
        raise DLCFormatError(f"Cannot read {path} as a DeepLabCut output: {error}") from error
    if list(frame.columns.names)[-1] != "coords" and frame.columns.nlevels in (3, 4):
        names = ["scorer", "bodyparts", "coords"] if frame.columns.nlevels == 3 else \
            ["scorer", "individuals", "bodyparts", "coords"]
        frame.columns = frame.columns.set_names(names)
    return frame


def read_dlc_output(path: str | Path) -> tuple[np.ndarray, list[str], str]:
    """Read a single-animal DeepLabCut pose output (.h5 or .csv) as (pose (frames, bodyparts,
    3), bodyparts, scorer). Multi-animal outputs: :func:`read_dlc_multi_output`."""
    frame = read_dlc_table(path)
    if frame.columns.nlevels != 3 or list(frame.columns.names)[-1] != "coords":
        raise DLCFormatError(
            f"{path} is not a single-animal DeepLabCut output (expected column levels "
            f"scorer/bodyparts/coords, found {list(frame.columns.names)})."
        )
    scorer = str(frame.columns.get_level_values(0)[0])
    bodyparts = list(dict.fromkeys(frame.columns.get_level_values(1)))
    pose = np.stack(
        [frame[scorer][bp][["x", "y", "likelihood"]].to_numpy(dtype=float) for bp in bodyparts], axis=1
    )
    return pose, bodyparts, scorer


def read_dlc_multi_output(frame: pd.DataFrame, path: str | Path
                          ) -> tuple[np.ndarray, list[str], list[str], str]:
    """A multi-animal DeepLabCut output DataFrame (scorer / individuals / bodyparts / coords)
    as (pose (frames, individuals, bodyparts, 3), individuals, bodyparts, scorer).

    Unique body parts (DeepLabCut's ``single`` individual) are kept as an individual named
    ``single``; parts an individual lacks are NaN.
    """
    if frame.columns.nlevels != 4:
        raise DLCFormatError(f"{path} is not a multi-animal DeepLabCut output (column levels "
                             f"{list(frame.columns.names)}).")
    scorer = str(frame.columns.get_level_values(0)[0])
    individuals = list(dict.fromkeys(frame.columns.get_level_values(1)))
    bodyparts = list(dict.fromkeys(frame.columns.get_level_values(2)))
    pose = np.full((len(frame), len(individuals), len(bodyparts), 3), np.nan)
    data = frame[scorer]
    for i, ind in enumerate(individuals):
        for k, part in enumerate(bodyparts):
            if (ind, part, "x") in data.columns:
                pose[:, i, k] = data[ind][part][["x", "y", "likelihood"]].to_numpy(dtype=float)
    return pose, individuals, bodyparts, scorer


def pose_to_dataframe(pose: np.ndarray, bodyparts: list[str], scorer: str,
                      index: np.ndarray | None = None,
                      individuals: Sequence[str] | None = None) -> pd.DataFrame:
    """A pose array as DeepLabCut's output DataFrame: (frames, bodyparts, 3) with columns
    scorer / bodyparts / coords, or (frames, individuals, bodyparts, 3) with ``individuals``
    in DeepLabCut's multi-animal layout scorer / individuals / bodyparts / coords."""
    pose = np.asarray(pose, dtype=float)
    if individuals is not None:
        if pose.ndim != 4 or pose.shape[1:] != (len(individuals), len(bodyparts), 3):
            raise ValueError(f"pose has shape {pose.shape}; expected (frames, "
                             f"{len(individuals)}, {len(bodyparts)}, 3).")
        columns = pd.MultiIndex.from_product(
            [[scorer], list(individuals), list(bodyparts), ["x", "y", "likelihood"]],
            names=["scorer", "individuals", "bodyparts", "coords"])
        return pd.DataFrame(pose.reshape(len(pose), -1), columns=columns, index=index)
    if pose.ndim != 3 or pose.shape[1:] != (len(bodyparts), 3):
        raise ValueError(f"pose has shape {pose.shape}; expected (frames, {len(bodyparts)}, 3).")
    columns = pd.MultiIndex.from_product(
        [[scorer], list(bodyparts), ["x", "y", "likelihood"]], names=["scorer", "bodyparts", "coords"]
    )
    return pd.DataFrame(pose.reshape(len(pose), -1), columns=columns, index=index)


def write_dlc_output(path: str | Path, pose: np.ndarray, bodyparts: list[str], scorer: str,
                     individuals: Sequence[str] | None = None) -> tuple[Path, Path]:
    """Write a pose array as DeepLabCut output: ``<path>.h5`` (key ``df_with_missing``) and
    ``<path>.csv``; several animals (``individuals``) in the multi-animal layout. Returns
    both paths."""
    path = Path(path)
    h5, csv_path = path.with_suffix(".h5"), path.with_suffix(".csv")
    frame = pose_to_dataframe(pose, bodyparts, scorer, individuals=individuals)
    write_hdf(frame, h5, key="df_with_missing")
    frame.to_csv(csv_path)
    return h5, csv_path


# --- writing a project (labels going out to a labeler) --------------------------------------

def label_frame_name(name: str, video: str | None, index: int, payload: bytes) -> str:
    """A DeepLabCut ``labeled-data/<video>/<image>`` name for a frame.

    Names that already have that form are kept (so a DeepLabCut project exports back under
    its own names); others become ``labeled-data/<video>/img<index:05d>.<png|jpg>``, the
    extension following the image bytes.
    """
    parts = Path(name).parts
    if len(parts) == 3 and parts[0] == "labeled-data" and Path(name).suffix:
        return "/".join(parts)
    ext = ".jpg" if payload[:2] == b"\xff\xd8" else ".png"
    folder = re.sub(r"[^\w.-]+", "_", video or "frames").strip("._") or "frames"
    return f"labeled-data/{folder}/img{index:05d}{ext}"


def labels_dataframe(data: LabeledData, names: list[str]) -> pd.DataFrame:
    """DeepLabCut's CollectedData table: rows (``labeled-data``, video, image), columns scorer /
    (individuals /) bodyparts / coords, NaN where a part is not labeled."""
    multi = len(data.individuals) > 1 or data.individuals != [SINGLE]
    scorer = data.scorer or "element-pose"
    if multi:
        columns = pd.MultiIndex.from_product(
            [[scorer], data.individuals, data.bodyparts, ["x", "y"]],
            names=["scorer", "individuals", "bodyparts", "coords"])
        values = data.keypoints.reshape(len(data), -1)
    else:
        columns = pd.MultiIndex.from_product(
            [[scorer], data.bodyparts, ["x", "y"]], names=["scorer", "bodyparts", "coords"])
        values = data.keypoints[:, 0].reshape(len(data), -1)
    index = pd.MultiIndex.from_tuples([tuple(Path(n).parts) for n in names])
    return pd.DataFrame(values.astype(np.float64), index=index, columns=columns)


def write_dlc_project(project_dir: str | Path, data: LabeledData, images: list[bytes],
                      task: str = "element-pose", extra_config: dict | None = None) -> Path:
    """Write labeled frames as a DeepLabCut project that DeepLabCut 3 and napari-deeplabcut open.

    Writes ``config.yaml``, every image at its frame name (``labeled-data/<video>/<image>``,
    the bytes as given) and, per video folder, ``CollectedData_<scorer>.h5`` (key
    ``df_with_missing``) and ``.csv``.

    Parameters
    ----------
    project_dir : str or Path
        A new or empty folder.
    data : LabeledData
        Frame names must have the form ``labeled-data/<video>/<image>`` (see
        :func:`label_frame_name`).
    images : list of bytes
        Encoded image (PNG/JPEG) of each frame, in ``data.frames`` order.
    extra_config : dict, optional
        More ``config.yaml`` keys (e.g. ``video_sets``).

    Returns
    -------
    Path
        The project folder.
    """
    project_dir = Path(project_dir)
    if project_dir.exists() and any(project_dir.iterdir()):
        raise FileExistsError(f"{project_dir} is not empty; export into a new folder so no labels "
                              "are overwritten.")
    if len(images) != len(data):
        raise ValueError(f"{len(images)} images for {len(data)} frames.")
    names = [f.name for f in data.frames]
    bad = [n for n in names if len(Path(n).parts) != 3 or Path(n).parts[0] != "labeled-data"]
    if bad:
        raise ValueError(f"Frame names must be labeled-data/<video>/<image>, e.g. not {bad[:3]}; "
                         "use label_frame_name().")
    scorer = data.scorer or "element-pose"
    multi = len(data.individuals) > 1 or data.individuals != [SINGLE]
    config: dict = {
        "Task": task, "scorer": scorer, "date": "", "multianimalproject": multi,
        "identity": None if not multi else False, "project_path": str(project_dir.absolute()),
        "video_sets": {}, "start": 0, "stop": 1, "numframes2pick": 20, "pcutoff": 0.6,
        "dotsize": 8, "alphavalue": 0.7, "colormap": "rainbow", "iteration": 0,
        "TrainingFraction": [0.95], "default_net_type": "resnet_50", "default_augmenter": "default",
        "snapshotindex": -1, "batch_size": 8, "cropping": False, "x1": 0, "x2": 640, "y1": 277,
        "y2": 624, "corner2move2": [50, 50], "move2corner": True,
        "skeleton": [list(edge) for edge in data.skeleton], "skeleton_color": "black",
    }
    if multi:
        config.update(individuals=list(data.individuals), uniquebodyparts=[],
                      multianimalbodyparts=list(data.bodyparts), bodyparts="MULTI!")
    else:
        config["bodyparts"] = list(data.bodyparts)
    config.update(extra_config or {})
    project_dir.mkdir(parents=True, exist_ok=True)
    (project_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for name, payload in zip(names, images, strict=True):
        path = project_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
    table = labels_dataframe(data, names)
    for video in dict.fromkeys(Path(n).parts[1] for n in names):
        part = table[table.index.get_level_values(1) == video]
        stem = project_dir / "labeled-data" / video / f"CollectedData_{scorer}"
        write_hdf(part, stem.with_suffix(".h5"), key="df_with_missing", format="fixed")
        part.to_csv(stem.with_suffix(".csv"))
    return project_dir
