"""The refinement loop: frame selection, outlier scoring, export for labeling, re-import as a new
dataset version, an extended split and a retrained model, on generated data whose ground truth
plays the labeler."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from element_pose.io.dlc import read_dlc_project
from element_pose.sample import make_sample

#: A tiny network: these tests check the tables on every database; what the loop buys (the
#: outliers hold the mistakes, retraining halves them) is asserted once, on the embedded
#: database, by the refinement notebook's test (tests/test_notebook.py), with longer training.
SMALL = {
    "backbone": "resnet18", "backbone_stride": 8, "head_channels": 64, "input_scale": 1.0,
    "crop_size": 96, "iterations": 60, "batch_size": 8, "sigma": 2.5, "locref_radius": 5.0,
    "schedule": {"warmup_iterations": 10}, "optimizer": {"lr": 0.003}, "device": "cpu",
    "checkpoint_every": 200,
}
#: The retraining: a fine-tune of the first model on the extended split.
FINE_TUNE = {**SMALL, "iterations": 30}


def label_as_truth(project: Path, truth: np.ndarray) -> int:
    """Play the labeler: set every frame of the project to the ground truth, to the 3 decimals
    the sample's labels have (CSV and .h5, as DeepLabCut saves both). Returns the number of
    frames written."""
    truth = np.round(truth, 3)
    count = 0
    for h5 in project.glob("labeled-data/*/CollectedData_*.h5"):
        table = pd.read_hdf(h5)
        for row in table.index:
            index = int(Path(row[-1]).stem.removeprefix("img"))
            table.loc[row] = truth[index].ravel()
            count += 1
        table.to_hdf(h5, key="df_with_missing", mode="w")
        table.to_csv(h5.with_suffix(".csv"))
    return count


@pytest.fixture(scope="module")
def loop(pipeline, tmp_path_factory):
    """A first model trained on 20 frames of a video in which a hand-like object sometimes
    hides the head (never in the labeled frames); a short fine-tune of it with another seed
    as the ensemble reference; its outliers."""
    train, model, refine = pipeline.train, pipeline.model, pipeline.refine
    root = Path(pipeline.get_pose_root_data_dir()[0])
    sample = make_sample(root / "refine", n_frames=240, n_labeled=28, width=128, height=96, seed=1,
                         video_name="refine_cam", intrusions=6)
    pipeline.Subject.insert1({"subject": "refine"}, skip_duplicates=True)
    session = {"subject": "refine", "session_id": 1}
    pipeline.Session.insert1({**session, "session_datetime": "2026-11-21 09:00:00"}, skip_duplicates=True)
    pipeline.Device.insert1({"device": "cam_refine"}, skip_duplicates=True)
    dataset = train.LabeledDataset.import_dlc(sample.project_dir, "refine_v0")
    names = train.DataSplit._frame_names(dataset)
    split = train.DataSplit.from_lists(dataset, [n for i, n in enumerate(names) if i % 7],
                                       names[::7])
    paramset = train.TrainingParamSet.insert_new_params(SMALL, description="small refine network")
    task = {**split, **paramset, "run_id": 0}
    train.TrainingTask.insert1(task, skip_duplicates=True)
    train.ModelTraining.populate(task)
    first = model.Model.from_training(task, "refine_m0")
    short = train.TrainingParamSet.insert_new_params({**SMALL, "iterations": 20})
    sibling = {**split, **short, "run_id": 1}
    train.TrainingTask.insert1(sibling, skip_duplicates=True)
    model.TrainingInit.insert1({**sibling, "parent_model": "refine_m0"}, skip_duplicates=True)
    train.ModelTraining.populate(sibling)
    second = model.Model.from_training(sibling, "refine_m0_sibling")
    recording = model.VideoRecording.add(session, 1, {"device": "cam_refine"}, [sample.video_path])
    model.RecordingInfo.populate(recording)
    poses = []
    for key in (first, second):
        pose_key = model.PoseEstimationTask.add(recording, key, batch_size=16)
        model.PoseEstimation.populate(pose_key)
        poses.append(pose_key)
    outlier_task = refine.OutlierTask.add(poses[0], {"n_frames": 12},
                                          reference_models=["refine_m0_sibling"])
    refine.OutlierScore.populate(outlier_task)
    selection = refine.FrameSelection.from_outliers("refine_outliers", outlier_task)
    return {"sample": sample, "dataset": dataset, "split": split, "paramset": paramset,
            "models": [first, second], "recording": recording, "poses": poses,
            "outliers": outlier_task, "selection": selection}


def test_outlier_scores_and_picks(pipeline, loop):
    refine = pipeline.refine
    rows = (refine.OutlierScore.Frame & loop["outliers"]).to_dicts(order_by="outlier_rank")
    picked = [r["frame_index"] for r in rows]
    assert len(picked) == 12 and len(set(picked)) == 12
    row = (refine.OutlierScore & loop["outliers"]).fetch1()
    assert row["score"].shape == (240,) and row["ensemble_signal"].shape == (240,)
    # the picks are the highest scores, at least 240 / (4 x 12) = 5 frames apart
    assert [r["outlier_score"] for r in rows] == sorted(row["score"][picked], reverse=True)
    assert min(np.diff(sorted(picked))) >= 5
    assert {r["main_signal"] for r in rows} <= {"likelihood", "jump", "filter", "ensemble"}
    assert len(refine.FrameSelection.Frame & loop["selection"]) == 12
    assert (refine.FrameSelection & loop["selection"]).fetch1("method") == "outliers"
    with pytest.raises(ValueError, match="reference model must differ"):
        refine.OutlierTask.add(loop["poses"][0], reference_models=["refine_m0"])
    with pytest.raises(ValueError, match="No PoseEstimation of this recording by model"):
        refine.OutlierTask.add(loop["poses"][0], reference_models=["no_such_model"])
    with pytest.raises(ValueError, match="n_frames"):
        refine.OutlierTask.add(loop["poses"][0], {"n_frames": -1})


def test_a_whole_iteration_through_the_tables(pipeline, loop, tmp_path):
    train, model, refine = pipeline.train, pipeline.model, pipeline.refine
    truth = loop["sample"].keypoints
    round_key = refine.LabelingRound.export("refine_r1", loop["dataset"], loop["selection"],
                                            tmp_path / "round1", prefill_model=loop["models"][0])
    project = tmp_path / "round1"
    exported = read_dlc_project(project)
    new = (refine.LabelingRound.NewFrame & round_key).to_dicts()
    n_new = len(new)  # outlier frames that were already labeled are not exported again
    assert n_new >= 8 and len(exported) == 28 + n_new
    # pre-filled: the model's guesses at or above its p-cutoff are in the file for the labeler
    # to correct, the others left for the labeler to place
    rows = [exported.frame_names.index(r["export_name"]) for r in new]
    guesses = model.Model.load(loop["models"][0]).predict_frames([exported.frames[i].read() for i in rows])
    expected = np.where(guesses[..., 2:] >= 0.6, guesses[..., :2], np.nan)
    np.testing.assert_allclose(exported.keypoints[rows, 0], expected, atol=1e-4)

    assert label_as_truth(project, truth) == 28 + n_new
    version = refine.LabelingRound.merge(round_key, "refine_v1")
    changes = pd.Series([r["change"] for r in (refine.DatasetVersion.Frame & version).to_dicts()])
    assert (changes == "new").sum() == n_new
    assert (changes == "unchanged").sum() == 28  # the sample's labels are the ground truth
    assert (refine.DatasetVersion & version).fetch1("parent_dataset") == "refine_v0"

    split = train.DataSplit.extend(loop["split"], version)
    old_test = {r["frame_name"] for r in (train.DataSplit.Frame * train.LabeledDataset.Frame
                                          & loop["split"] & "subset = 'test'").to_dicts()}
    new_test = {r["frame_name"] for r in (train.DataSplit.Frame * train.LabeledDataset.Frame
                                          & split & "subset = 'test'").to_dicts()}
    assert old_test == new_test
    assert len(train.DataSplit.frame_ids(split, "train")) == 24 + n_new

    task = {**split, **train.TrainingParamSet.insert_new_params(FINE_TUNE), "run_id": 0}
    train.TrainingTask.insert1(task)
    model.TrainingInit.insert1({**task, "parent_model": "refine_m0"})
    train.ModelTraining.populate(task)
    retrained = model.Model.from_training(task, "refine_m1")
    model.ModelEvaluation.populate([{**m, **split} for m in (loop["models"][0], retrained)])
    table = refine.compare_models(["refine_m0", "refine_m1"], split)
    assert list(table.index) == ["refine_m0", "refine_m1"]
    assert table["test_error_px"].notna().all()
    assert [r["model_name"] for r in model.Model.lineage(retrained)] == ["refine_m1", "refine_m0"]
    with pytest.raises(ValueError, match="No ModelEvaluation"):
        refine.compare_models(["refine_m0_sibling"], split)


def test_bad_relabels_are_refused_and_nothing_is_inserted(pipeline, loop, tmp_path):
    train, refine = pipeline.train, pipeline.refine
    truth = loop["sample"].keypoints
    round_key = refine.LabelingRound.export("refine_bad", loop["dataset"], loop["selection"],
                                            tmp_path / "export")
    n_datasets = len(train.LabeledDataset())

    renamed = tmp_path / "renamed"
    shutil.copytree(tmp_path / "export", renamed)
    for path in [renamed / "config.yaml", *renamed.glob("labeled-data/*/*.csv")]:
        path.write_text(path.read_text().replace("snout", "nose"))
    for path in renamed.glob("labeled-data/*/*.h5"):
        path.unlink()
    with pytest.raises(ValueError, match=r"body parts .* changed.*added \['nose'\]"):
        refine.LabelingRound.merge(round_key, "refine_bad_v1", labeled=renamed)

    altered = tmp_path / "altered"
    shutil.copytree(tmp_path / "export", altered)
    label_as_truth(altered, truth)
    image = next(altered.glob("labeled-data/*/img00*.png"))
    import cv2

    pixels = cv2.imread(str(image))
    pixels[0, 0] = 255 - pixels[0, 0]
    cv2.imwrite(str(image), pixels)
    with pytest.raises(ValueError, match="not the one exported"):
        refine.LabelingRound.merge(round_key, "refine_bad_v1", labeled=altered)

    first, second = tmp_path / "labeler_a", tmp_path / "labeler_b"
    shutil.copytree(tmp_path / "export", first)
    shutil.copytree(tmp_path / "export", second)
    label_as_truth(first, truth)
    label_as_truth(second, truth + 2.0)
    with pytest.raises(ValueError, match="labeled differently"):
        refine.LabelingRound.merge(round_key, "refine_bad_v1", labeled=[first, second])
    assert len(train.LabeledDataset()) == n_datasets
    assert not refine.DatasetVersion & {"dataset": "refine_bad_v1"}

    merged = refine.LabelingRound.merge(round_key, "refine_mean_v1", labeled=[first, second],
                                        on_conflict="mean")
    frames = (train.LabeledDataset.Frame & merged).to_dicts(order_by="frame_id")
    points = train.LabeledDataset.keypoints(merged)[:, 0]
    for frame, xy in zip(frames, points, strict=True):
        if frame["source_frame_index"] is not None and "img00" in frame["frame_name"]:
            np.testing.assert_allclose(xy, np.round(truth[frame["source_frame_index"]], 3) + 1.0,
                                       atol=1e-6)
    changes = [r["change"] for r in (refine.DatasetVersion.Frame & merged).to_dicts()]
    n_new = len(refine.LabelingRound.NewFrame & round_key)
    assert changes.count("corrected") == 28 and changes.count("new") == n_new


def test_sleap_round_trip_of_a_labeling_round(pipeline, loop, tmp_path):
    import sleap_io

    refine, train = pipeline.refine, pipeline.train
    truth = loop["sample"].keypoints
    round_key = refine.LabelingRound.export("refine_sleap", loop["dataset"], loop["selection"],
                                            tmp_path / "round.slp", export_format="sleap",
                                            prefill_model=loop["models"][0])
    labels = sleap_io.load_slp(str(tmp_path / "round.slp"))
    new = {r["export_name"]: r["frame_index"] for r in (refine.LabelingRound.NewFrame & round_key).to_dicts()}
    assert sum(len(lf.user_instances) for lf in labels.labeled_frames) == 28
    assert sum(len(lf.predicted_instances) for lf in labels.labeled_frames) == len(new)
    # the labeler accepts each prediction and moves it to the truth
    skeleton = labels.skeletons[0]
    for lf in labels.labeled_frames:
        name = f"{Path(lf.video.filename[0]).parent.name}/{lf.frame_idx:06d}"
        if name in new:
            lf.instances = [sleap_io.Instance.from_numpy(truth[new[name]], skeleton)]
    edited = tmp_path / "edited.slp"
    shutil.copytree(tmp_path / "round.images", tmp_path / "edited.images")
    sleap_io.save_slp(labels, str(edited), embed=False, verbose=False)
    version = refine.LabelingRound.merge(round_key, "refine_sleap_v1", labeled=edited)
    frames = (train.LabeledDataset.Frame & version).to_dicts(order_by="frame_id")
    points = train.LabeledDataset.keypoints(version)[:, 0]
    new_rows = [(f, p) for f, p in zip(frames, points, strict=True) if f["frame_name"].endswith(
        tuple(f"img{i:05d}.png" for i in new.values()))]
    assert len(new_rows) == len(new)
    for frame, xy in new_rows:
        np.testing.assert_allclose(xy, truth[frame["source_frame_index"]], atol=1e-4)


def test_dataset_exports_round_trip_exactly(pipeline, loop, tmp_path):
    train = pipeline.train
    source = train.LabeledDataset & loop["dataset"]
    train.LabeledDataset.export_dlc(loop["dataset"], tmp_path / "dlc")
    again = train.LabeledDataset.import_dlc(tmp_path / "dlc", "refine_dlc_again")
    assert (train.LabeledDataset & again).fetch1("content_sha256") == source.fetch1("content_sha256")
    # pandas reads both files the way DeepLabCut does
    h5 = next((tmp_path / "dlc").glob("labeled-data/*/CollectedData_*.h5"))
    table = pd.read_hdf(h5)
    csv = pd.read_csv(h5.with_suffix(".csv"), header=[0, 1, 2], index_col=[0, 1, 2])
    np.testing.assert_allclose(table.to_numpy(), csv.to_numpy())
    assert table.index.nlevels == 3 and list(table.columns.names) == ["scorer", "bodyparts", "coords"]

    path = train.LabeledDataset.export_sleap(loop["dataset"], tmp_path / "labels.slp")
    back = train.LabeledDataset.import_sleap(path, "refine_slp_again")
    np.testing.assert_array_equal(train.LabeledDataset.keypoints(back), train.LabeledDataset.keypoints(loop["dataset"]))
    shas = [r["image_sha256"] for r in (train.LabeledDataset.Frame & back).to_dicts(order_by="frame_id")]
    assert shas == [r["image_sha256"] for r in (train.LabeledDataset.Frame & loop["dataset"]).to_dicts(
        order_by="frame_id")]
    with pytest.raises(FileExistsError):
        train.LabeledDataset.export_dlc(loop["dataset"], tmp_path / "dlc")


def test_kmeans_frame_selection_covers_the_recording(pipeline, loop):
    refine = pipeline.refine
    key = refine.FrameSelection.select("refine_kmeans", loop["recording"], 10, seed=0,
                                       exclude_dataset=loop["dataset"])
    rows = (refine.FrameSelection.Frame & key).to_dicts(order_by="frame_index")
    indices = [r["frame_index"] for r in rows]
    assert len(indices) == 10
    assert {r["reason"] for r in rows} == {"kmeans", "uniform"}
    assert not set(indices) & set(loop["sample"].labeled_frames)
    assert max(indices) - min(indices) > 120  # spread over the 240 frames
    again = refine.FrameSelection.select("refine_kmeans_2", loop["recording"], 10, seed=0,
                                         exclude_dataset=loop["dataset"])
    assert [r["frame_index"] for r in (refine.FrameSelection.Frame & again).to_dicts(
        order_by="frame_index")] == indices
    with pytest.raises(ValueError, match="exists"):
        refine.FrameSelection.select("refine_kmeans", loop["recording"], 10)
    with pytest.raises(ValueError, match="method"):
        refine.FrameSelection.select("refine_bad", loop["recording"], 10, method="random")


# --- the algorithms alone (no database) ---------------------------------------------------


def smooth_pose(n: int = 300, parts: int = 3, seed: int = 0) -> np.ndarray:
    """A smooth, confident trajectory (frames, parts, 3) with a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    xy = np.stack([100 + 30 * np.sin(t / 40 + np.arange(parts)), 80 + 20 * np.cos(t / 50 + np.arange(parts))], -1)
    xy += rng.normal(0, 0.3, xy.shape)
    return np.concatenate([xy, np.full((n, parts, 1), 0.95)], axis=-1)


def test_each_signal_finds_its_kind_of_mistake():
    from element_pose.outliers import pick_spread, score_frames

    pose = smooth_pose()
    pose[50, 1, :2] += 25          # a one-frame jump
    pose[150, :, 2] = 0.05         # the model is unsure everywhere
    other = pose.copy()
    other[250, 2, :2] += 15        # a second model disagrees
    scores = score_frames(pose, [other])
    picked = pick_spread(scores.score, 3)
    assert set(picked.tolist()) == {50, 150, 250}
    assert scores.main_signal(150) == "likelihood"
    assert scores.main_signal(250) == "ensemble"
    assert scores.main_signal(50) in {"jump", "filter"}
    without = score_frames(pose)
    assert "ensemble" not in without.signals and 250 not in pick_spread(without.score, 2).tolist()


def test_picks_are_spread_over_the_recording():
    from element_pose.outliers import pick_spread

    score = np.zeros(400)
    score[100:120] = np.linspace(10, 9, 20)   # one bad second of video ...
    score[300] = 5                             # ... and one other bad frame
    spread = pick_spread(score, 2)
    assert set(spread.tolist()) == {100, 300}
    assert pick_spread(score, 2, min_gap=0).tolist() == [100, 101]
    assert pick_spread(score, 3, candidates=[5, 110, 300]).tolist() == [110, 300, 5]
    with pytest.raises(ValueError, match="candidates"):
        pick_spread(score, 2, candidates=[400])


@pytest.mark.parametrize("params, message", [
    ({"n_frames": 0}, "n_frames"), ({"n_frames": "20"}, "n_frames"), ({"weights": {"speed": 1}}, "speed"),
    ({"weights": {"jump": -1}}, "jump"), ({"filter_window": 4}, "filter_window"),
    ({"weights": dict.fromkeys(("likelihood", "jump", "filter", "ensemble"), 0)}, "All outlier weights"),
    ({"min_gap": 1.5}, "min_gap"), ({"nframes": 3}, "Unknown outlier parameter"),
])
def test_bad_outlier_parameters_are_named(params, message):
    from element_pose.outliers import OutlierParams

    with pytest.raises(ValueError, match=message):
        OutlierParams.from_dict(params)


def test_kmeans_picks_one_frame_of_each_scene(tmp_path):
    import cv2

    from element_pose.frame_selection import frame_features, pick_frames

    path = tmp_path / "scenes.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
    scenes = [(0, 60), (60, 70), (70, 150)]    # a short middle scene that uniform picks miss
    for i in range(150):
        frame = np.full((48, 64, 3), 30, np.uint8)
        scene = next(k for k, (a, b) in enumerate(scenes) if a <= i < b)
        x = 8 + 20 * scene
        frame[10:30, x:x + 16] = 220 - (i % 3)
        writer.write(frame)
    writer.release()
    indices, features = frame_features([path], 150, width=16, progress=False)
    chosen = pick_frames(indices, features, 3, "kmeans", uniform_fraction=0.0)
    assert sorted({next(k for k, (a, b) in enumerate(scenes) if a <= i < b) for i, _ in chosen}) == [0, 1, 2]
    uniform = pick_frames(indices, features, 3, "uniform")
    assert [i for i, _ in uniform] == [0, 74, 149] and {r for _, r in uniform} == {"uniform"}
    assert all(i not in (0, 74) for i, _ in pick_frames(indices, features, 3, "uniform", exclude=[0, 74]))
    with pytest.raises(ValueError, match="n_frames"):
        pick_frames(indices, features, 0)
