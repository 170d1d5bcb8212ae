"""Importing labeled data (DeepLabCut projects) and making data splits."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import shared_dataset

from element_pose.io.dlc import DLCFormatError, read_dlc_project
from element_pose.sample import BODYPARTS, make_sample


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return make_sample(tmp_path_factory.mktemp("sample"), n_frames=40, n_labeled=12, width=96,
                       height=72, seed=3)


def _copy_project(sample, tmp_path):
    target = tmp_path / "project"
    shutil.copytree(sample.project_dir, target)
    return target


def _csv(project):
    return next((project / "labeled-data").glob("*/CollectedData_*.csv"))


def test_import_dlc_counts_and_coordinates(pipeline, sample):
    train = pipeline.train
    key = train.LabeledDataset.import_dlc(sample.project_dir, "synthetic_a")
    assert key == {"dataset": "synthetic_a"}
    assert len(train.LabeledDataset.Frame & key) == 12
    assert len(train.LabeledDataset.Label & key) == 12 * len(BODYPARTS)
    assert train.LabeledDataset.bodyparts(key) == BODYPARTS
    keypoints = train.LabeledDataset.keypoints(key)
    np.testing.assert_allclose(keypoints[:, 0], sample.keypoints[sample.labeled_frames], atol=1e-3)
    images = train.LabeledDataset.images(key, [0, 5])
    assert images[0].shape == (72, 96, 3) and images[0].dtype == np.uint8
    frame = (train.LabeledDataset.Frame & key & {"frame_id": 1}).fetch1()
    assert frame["source_video"] == "arena_cam"
    assert frame["source_frame_index"] == sample.labeled_frames[1]
    assert (frame["width"], frame["height"]) == (96, 72)
    assert (train.LabeledDataset & key).fetch1("skeleton") == [list(e) for e in
                                                              yaml.safe_load((sample.project_dir / "config.yaml").read_text())["skeleton"]]


def test_reimport_is_noop_and_conflicting_name_fails(pipeline, sample, tmp_path, caplog):
    train = pipeline.train
    key = train.LabeledDataset.import_dlc(sample.project_dir, "synthetic_b")
    n_labels = len(train.LabeledDataset.Label())
    assert train.LabeledDataset.import_dlc(sample.project_dir, "synthetic_b") == key
    assert "already imported" in caplog.text
    assert len(train.LabeledDataset.Label()) == n_labels

    changed = _copy_project(sample, tmp_path)
    text = _csv(changed).read_text().splitlines()
    cells = text[3].split(",")
    cells[1] = str(float(cells[1]) + 1.0)
    text[3] = ",".join(cells)
    _csv(changed).write_text("\n".join(text) + "\n")
    with pytest.raises(ValueError, match="already exists"):
        train.LabeledDataset.import_dlc(changed, "synthetic_b")
    assert len(train.LabeledDataset.Label()) == n_labels


@pytest.mark.parametrize("damage, message", [
    ("missing_dir", "not found"),
    ("no_labels", "No labels"),
    ("bodypart_mismatch", "disagree with"),
    ("missing_image", "missing"),
    ("bad_number", "not a number"),
    ("header_only", "no labeled frames"),
    ("h5_disagrees", "disagree on frame"),
    ("outside_image", r"outside its image.*frame 'labeled-data/arena_cam/img\d+\.png'.*"
                      r"x=-40.*96x72"),
])
def test_bad_projects_leave_no_rows(pipeline, sample, tmp_path, damage, message):
    train = pipeline.train
    project = _copy_project(sample, tmp_path)
    if damage == "missing_dir":
        project = tmp_path / "nowhere"
    elif damage == "no_labels":
        _csv(project).unlink()
    elif damage == "bodypart_mismatch":
        config = yaml.safe_load((project / "config.yaml").read_text())
        config["bodyparts"] = ["snout", "leftear", "rightear", "tailtip"]
        (project / "config.yaml").write_text(yaml.safe_dump(config))
    elif damage == "missing_image":
        next((project / "labeled-data").glob("*/*.png")).unlink()
    elif damage == "bad_number":
        lines = _csv(project).read_text().splitlines()
        lines[4] = lines[4].replace(lines[4].split(",")[2], "abc", 1)
        _csv(project).write_text("\n".join(lines) + "\n")
    elif damage == "header_only":
        lines = _csv(project).read_text().splitlines()
        _csv(project).write_text("\n".join(lines[:3]) + "\n")
    elif damage in ("h5_disagrees", "outside_image"):
        frame = pd.read_csv(_csv(project), header=[0, 1, 2], index_col=0)
        if damage == "h5_disagrees":  # a stale .h5 beside an edited .csv
            frame.to_hdf(_csv(project).with_suffix(".h5"), key="df_with_missing", mode="w")
            frame.iloc[2, 1] += 3.0
        else:
            frame.iloc[2, 0] = -40.0
        frame.to_csv(_csv(project))
    before = (len(train.LabeledDataset()), len(train.LabeledDataset.Frame()), len(train.LabeledDataset.Label()))
    error = ValueError if damage == "outside_image" else DLCFormatError
    with pytest.raises(error, match=message):
        train.LabeledDataset.import_dlc(project, f"bad_{damage}")
    after = (len(train.LabeledDataset()), len(train.LabeledDataset.Frame()), len(train.LabeledDataset.Label()))
    assert after == before


def test_altered_image_in_the_store_is_detected(pipeline, sample):
    """A swapped image in the object store would silently change every evaluation."""
    train = pipeline.train
    key = train.LabeledDataset.import_dlc(sample.project_dir, "synthetic_store")
    row = (train.LabeledDataset.Frame & key & {"frame_id": 2}).fetch1("image")
    other = (train.LabeledDataset.Frame & key & {"frame_id": 3}).fetch1("image").read()
    with row.fs.open(row.full_path, "wb") as f:  # tamper with the store itself
        f.write(other)
    train.LabeledDataset.images(key, [0, 1])  # untouched frames still read
    with pytest.raises(ValueError, match=r"frame 'labeled-data/arena_cam/img\d+\.png' "
                                         r"\(frame_id 2\) of dataset 'synthetic_store'.*sha256"):
        train.LabeledDataset.images(key, [1, 2])


def test_wrong_type_name_rejected(pipeline, sample):
    with pytest.raises(TypeError, match="name"):
        pipeline.train.LabeledDataset.import_dlc(sample.project_dir, 42)


def test_multianimal_and_three_index_columns(tmp_path, sample):
    """The multi-animal four-row header with DLC 2.3's three index columns."""
    project = tmp_path / "ma"
    folder = project / "labeled-data" / "vid"
    folder.mkdir(parents=True)
    src = next((sample.project_dir / "labeled-data").glob("*/img*.png"))
    for name in ("img0001.png", "img0002.png"):
        shutil.copy(src, folder / name)
    rows = [
        ["scorer", "", ""] + ["me"] * 8,
        ["individuals", "", ""] + ["m1"] * 4 + ["m2"] * 4,
        ["bodyparts", "", ""] + ["nose", "nose", "tail", "tail"] * 2,
        ["coords", "", ""] + ["x", "y"] * 4,
        ["labeled-data", "vid", "img0001.png", "1", "2", "3", "4", "5", "6", "", ""],
        ["labeled-data", "vid", "img0002.png", "7", "8", "9", "10", "11", "12", "13", "14"],
    ]
    (folder / "CollectedData_me.csv").write_text("\n".join(",".join(r) for r in rows) + "\n")
    (project / "config.yaml").write_text(yaml.safe_dump({
        "multianimalproject": True, "individuals": ["m1", "m2"], "multianimalbodyparts": ["nose", "tail"],
        "uniquebodyparts": [], "skeleton": [["nose", "tail"]]}))
    data = read_dlc_project(project)
    assert data.individuals == ["m1", "m2"]
    assert data.bodyparts == ["nose", "tail"]
    assert data.frame_names == ["labeled-data/vid/img0001.png", "labeled-data/vid/img0002.png"]
    assert data.keypoints.shape == (2, 2, 2, 2)
    np.testing.assert_array_equal(data.keypoints[0, 1, 0], [5, 6])
    assert np.isnan(data.keypoints[0, 1, 1]).all()
    np.testing.assert_array_equal(data.keypoints[1, 1, 1], [13, 14])
    assert data.skeleton == [("nose", "tail")]


def test_windows_paths_in_labels(tmp_path, sample):
    project = _copy_project(sample, tmp_path)
    csv_path = _csv(project)
    csv_path.write_text(csv_path.read_text().replace("labeled-data/arena_cam/", "labeled-data\\arena_cam\\"))
    data = read_dlc_project(project)
    assert data.frame_names[0] == "labeled-data/arena_cam/img0000.png"
    assert data.frames[0].source_video == "arena_cam"


def test_h5_labels_read_like_csv(tmp_path, sample):
    project = _copy_project(sample, tmp_path)
    csv_path = _csv(project)
    frame = pd.read_csv(csv_path, header=[0, 1, 2], index_col=0)
    frame.to_hdf(csv_path.with_suffix(".h5"), key="df_with_missing", mode="w")
    csv_path.unlink()
    from_h5 = read_dlc_project(project)
    from_csv = read_dlc_project(sample.project_dir)
    assert from_h5.frame_names == from_csv.frame_names
    np.testing.assert_allclose(from_h5.keypoints, from_csv.keypoints)


def test_splits(pipeline, sample):
    train = pipeline.train
    key = train.LabeledDataset.import_dlc(sample.project_dir, "synthetic_split")
    split = train.DataSplit.random(key, test_fraction=0.25, seed=7)
    test_ids = train.DataSplit.frame_ids(split, "test")
    train_ids = train.DataSplit.frame_ids(split, "train")
    assert len(test_ids) == 3 and len(train_ids) == 9
    assert not set(test_ids) & set(train_ids)
    assert train.DataSplit.random(key, test_fraction=0.25, seed=7) == split  # same split reused
    other = train.DataSplit.random(key, test_fraction=0.25, seed=8)
    assert other["split_id"] != split["split_id"]

    names = [f["frame_name"] for f in (train.LabeledDataset.Frame & key).to_dicts(order_by="frame_id")]
    listed = train.DataSplit.from_lists(key, names[:8], names[8:])
    assert train.DataSplit.frame_ids(listed, "test") == [8, 9, 10, 11]
    with pytest.raises(ValueError, match="not in dataset"):
        train.DataSplit.from_lists(key, names[:8] + ["labeled-data/x/nope.png"], names[8:])
    with pytest.raises(ValueError, match="both train and test"):
        train.DataSplit.from_lists(key, names[:9], names[8:])
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        train.DataSplit.random(key, test_fraction=1.5)
    with pytest.raises(TypeError, match="test_fraction"):
        train.DataSplit.random(key, test_fraction="0.2")


def test_openfield_import(pipeline):
    project = shared_dataset("openfield-Pranav-2018-10-30")
    train = pipeline.train
    key = train.LabeledDataset.import_dlc(project, "openfield")
    assert len(train.LabeledDataset.Frame & key) == 116
    assert train.LabeledDataset.bodyparts(key) == ["snout", "leftear", "rightear", "tailbase"]
    csv = pd.read_csv(project / "labeled-data/m4s1/CollectedData_Pranav.csv", header=[0, 1, 2], index_col=0)
    keypoints = train.LabeledDataset.keypoints(key)
    np.testing.assert_allclose(keypoints[0, 0, 0], [21.521, 265.428])
    np.testing.assert_allclose(keypoints[-1, 0, 3], csv.iloc[-1].loc["Pranav"].loc["tailbase"].to_numpy(float))
    split = train.DataSplit.from_split_json(key, project / "split.json")
    assert len(train.DataSplit.frame_ids(split, "train")) == 96
    assert len(train.DataSplit.frame_ids(split, "test")) == 20


def test_mirror_mouse_import(pipeline):
    project = shared_dataset("lightning-pose-mirror-mouse")
    train = pipeline.train
    key = train.LabeledDataset.import_dlc(project, "mirror_mouse")
    assert len(train.LabeledDataset.Frame & key) == 90
    parts = train.LabeledDataset.bodyparts(key)
    assert len(parts) == 17 and parts[0] == "paw1LH_top"
    csv = pd.read_csv(project / "CollectedData.csv", header=[0, 1, 2], index_col=0)
    keypoints = train.LabeledDataset.keypoints(key)[:, 0]
    expected = csv.to_numpy(float).reshape(len(csv), 17, 2)
    np.testing.assert_allclose(keypoints, expected, equal_nan=True)
    hidden = (train.LabeledDataset.Label & key & "x is null")
    assert len(hidden) == int(np.isnan(expected[..., 0]).sum()) > 0
    frame = (train.LabeledDataset.Frame & key & {"frame_id": 0}).fetch1()
    assert (frame["width"], frame["height"]) == (396, 406)
    split = train.DataSplit.from_split_json(key, project / "split.json")
    assert len(train.DataSplit.frame_ids(split, "train")) == 72


def test_sleap_import_keeps_individuals(pipeline):
    clip = shared_dataset("sleap-fly-clip")
    train = pipeline.train
    key = train.LabeledDataset.import_sleap(clip / "clip.slp", "fly_clip", frames=slice(0, 20))
    assert (train.LabeledDataset & key).fetch1("source_format") == "sleap"
    assert len(train.LabeledDataset.Frame & key) == 20
    assert sorted(train.LabeledDataset.individuals(key)) == ["female", "male"]
    assert len(train.LabeledDataset.bodyparts(key)) == 13
    assert len(train.LabeledDataset.Label & key) == 20 * 2 * 13
    labels = pd.read_csv(clip / "clip_labels_long.csv")
    row = labels[(labels.frame_idx == 7) & (labels.track == "male") & (labels.node == "head")].iloc[0]
    stored = (train.LabeledDataset.Label & key & {"frame_id": 7, "individual": "male",
                                                  "body_part": "head"}).fetch1()
    assert (stored["x"], stored["y"]) == pytest.approx((row.x, row.y))
    frame = (train.LabeledDataset.Frame & key & {"frame_id": 7}).fetch1()
    assert (frame["width"], frame["height"], frame["source_frame_index"]) == (1024, 1024, 7)
    assert len((train.LabeledDataset & key).fetch1("skeleton")) > 0


@pytest.mark.parametrize("change, message", [
    (lambda d: d.bodyparts.__setitem__(1, "Snout"), "'snout' and 'Snout' differ only in case"),
    (lambda d: d.bodyparts.__setitem__(1, "leftear "), "spaces"),
    (lambda d: d.bodyparts.__setitem__(1, "left\x00ear"), "control"),
    (lambda d: d.bodyparts.__setitem__(1, "x" * 65), "at most 64"),
    (lambda d: setattr(d.frames[0], "name", "labeled-data/" + "f" * 300), "at most 255"),
])
def test_names_are_checked_the_same_on_every_database(pipeline, sample, change, message):
    """Names the database would reject, or that MySQL's collation would treat as equal while
    PostgreSQL does not, are refused before anything is inserted, on every backend."""
    train = pipeline.train
    data = read_dlc_project(sample.project_dir)
    change(data)
    before = len(train.LabeledDataset())
    with pytest.raises(ValueError, match=message):
        train.LabeledDataset.import_labels(data, "bad_names")
    assert len(train.LabeledDataset()) == before
