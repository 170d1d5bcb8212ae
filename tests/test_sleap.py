"""SLEAP reader: real fly clip from ../shared/data and small .slp files written with sleap-io."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from element_pose.io.sleap import read_sleap

FLY = Path(__file__).resolve().parents[2] / "shared" / "data" / "sleap-fly-clip"
FLY_NODES = ["head", "thorax", "abdomen", "wingL", "wingR", "forelegL4", "forelegR4",
             "midlegL4", "midlegR4", "hindlegL4", "hindlegR4", "eyeL", "eyeR"]

needs_fly = pytest.mark.skipif(not (FLY / "clip.slp").is_file(),
                               reason=f"shared data not available: {FLY}")


@pytest.fixture(scope="module")
def fly():
    return read_sleap(FLY / "clip.slp")


@needs_fly
@pytest.mark.shared_data
def test_fly_structure(fly):
    assert len(fly) == 1500
    assert fly.keypoints.shape == (1500, 2, 13, 2)
    assert fly.individuals == ["female", "male"]
    assert fly.bodyparts == FLY_NODES
    assert ("head", "eyeL") in fly.skeleton
    assert ("thorax", "abdomen") in fly.skeleton
    assert len(fly.skeleton) == 12
    assert fly.frames[0].name == "clip.mp4/000000"
    assert fly.frames[1499].name == "clip.mp4/001499"
    assert fly.frames[7].frame_index == 7
    assert fly.frames[7].video_path == (FLY / "clip.mp4").resolve()
    assert fly.frames[7].source_video == "clip.mp4"
    assert fly.source.endswith("clip.slp")


@needs_fly
@pytest.mark.shared_data
def test_fly_coordinates_match_csv(fly):
    table = pd.read_csv(FLY / "clip_labels_long.csv")
    assert len(table) == 1500 * 2 * 13
    ind = {name: i for i, name in enumerate(fly.individuals)}
    node = {name: i for i, name in enumerate(fly.bodyparts)}
    got = fly.keypoints[table["frame_idx"].to_numpy(),
                        [ind[t] for t in table["track"]],
                        [node[n] for n in table["node"]]]
    expected = table[["x", "y"]].to_numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got, expected, equal_nan=True)
    # a few spelled-out values (first rows of the CSV)
    male, head = ind["male"], node["head"]
    np.testing.assert_allclose(fly.keypoints[0, male, head], [335.25, 444.75])
    np.testing.assert_allclose(fly.keypoints[0, male, node["thorax"]], [301.75, 457.75])
    # missing points are NaN, and there are some in this file
    assert np.isnan(fly.keypoints).any()


@needs_fly
@pytest.mark.shared_data
def test_fly_frame_reads_pixels(fly):
    image = fly.frames[2].read()
    assert image.shape == (1024, 1024, 3)
    assert image.dtype == np.uint8
    assert image.std() > 1.0  # a real picture, not a blank frame


@needs_fly
@pytest.mark.shared_data
def test_fly_subset_and_video_root(tmp_path):
    subset = read_sleap(FLY / "clip.slp", frames=slice(100, 110))
    assert subset.frame_names == [f"clip.mp4/{i:06d}" for i in range(100, 110)]
    full = read_sleap(FLY / "clip.slp", frames=[5, 2])
    assert full.frame_names == ["clip.mp4/000005", "clip.mp4/000002"]
    assert full.keypoints.shape == (2, 2, 13, 2)
    again = read_sleap(FLY / "clip.slp", frames=slice(5, 6))
    np.testing.assert_array_equal(full.keypoints[0], again.keypoints[0])
    # a video root without the video falls back to the .slp folder
    rooted = read_sleap(FLY / "clip.slp", video_root=tmp_path, frames=[0])
    assert rooted.frames[0].video_path == (FLY / "clip.mp4").resolve()
    with pytest.raises(ValueError, match="out of range"):
        read_sleap(FLY / "clip.slp", frames=[1500])
    with pytest.raises(ValueError, match="video_root"):
        read_sleap(FLY / "clip.slp", video_root=tmp_path / "missing")


def _write_video(path: Path, n_frames: int = 4, size: tuple[int, int] = (64, 48)) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, size)
    assert writer.isOpened()
    for i in range(n_frames):
        writer.write(np.full((size[1], size[0], 3), 40 * i, dtype=np.uint8))
    writer.release()


def _untracked_labels(tmp_path: Path, video_name: str) -> Path:
    import sleap_io as sio

    skeleton = sio.Skeleton(["nose", "tail"], edges=[("nose", "tail")])
    video = sio.Video(filename=video_name, open_backend=False)
    frames = [
        sio.LabeledFrame(video=video, frame_idx=2, instances=[
            sio.Instance.from_numpy(np.array([[1.0, 2.0], [3.0, 4.0]]), skeleton=skeleton),
            sio.Instance.from_numpy(np.array([[5.0, 6.0], [np.nan, np.nan]]), skeleton=skeleton),
        ]),
        sio.LabeledFrame(video=video, frame_idx=0, instances=[
            sio.Instance.from_numpy(np.array([[7.0, 8.0], [9.0, 10.0]]), skeleton=skeleton),
        ]),
        # only a prediction: skipped unless include_predicted
        sio.LabeledFrame(video=video, frame_idx=3, instances=[
            sio.PredictedInstance.from_numpy(np.array([[11.0, 12.0], [13.0, 14.0]]),
                                             skeleton=skeleton, point_scores=np.array([0.9, 0.8]),
                                             score=0.85),
        ]),
    ]
    labels = sio.Labels(labeled_frames=frames, videos=[video], skeletons=[skeleton])
    slp = tmp_path / "labels" / "untracked.slp"
    slp.parent.mkdir()
    sio.save_slp(labels, str(slp))
    return slp


def test_untracked_instances_and_path_resolution(tmp_path):
    # the .slp stores an absolute path that no longer exists; the video sits beside the .slp
    slp = _untracked_labels(tmp_path, "/nonexistent/lab/machine/session1.mp4")
    _write_video(slp.parent / "session1.mp4")
    data = read_sleap(slp)
    assert data.individuals == ["animal0", "animal1"]
    assert data.bodyparts == ["nose", "tail"]
    assert data.skeleton == [("nose", "tail")]
    assert data.frame_names == ["session1.mp4/000000", "session1.mp4/000002"]
    np.testing.assert_array_equal(data.keypoints[0, 0], [[7.0, 8.0], [9.0, 10.0]])
    assert np.isnan(data.keypoints[0, 1]).all()  # only one instance in frame 0
    np.testing.assert_array_equal(data.keypoints[1, 0], [[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(data.keypoints[1, 1, 0], [5.0, 6.0])
    assert np.isnan(data.keypoints[1, 1, 1]).all()
    assert data.frames[1].video_path == (slp.parent / "session1.mp4").resolve()
    assert data.frames[1].read().shape == (48, 64, 3)
    assert int(data.frames[1].read()[0, 0, 0]) == pytest.approx(80, abs=6)

    with_predicted = read_sleap(slp, include_predicted=True)
    assert with_predicted.frame_names[-1] == "session1.mp4/000003"
    np.testing.assert_array_equal(with_predicted.keypoints[-1, 0], [[11.0, 12.0], [13.0, 14.0]])


def test_video_root_takes_precedence(tmp_path):
    slp = _untracked_labels(tmp_path, "videos/session1.mp4")
    elsewhere = tmp_path / "archive"
    (elsewhere / "videos").mkdir(parents=True)
    _write_video(elsewhere / "videos" / "session1.mp4")
    data = read_sleap(slp, video_root=elsewhere)
    assert data.frames[0].video_path == (elsewhere / "videos" / "session1.mp4").resolve()
    # without the root, the stored relative path is resolved against the .slp folder (missing)
    missing = read_sleap(slp)
    assert missing.frames[0].video_path == slp.parent / "videos" / "session1.mp4"


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_sleap(tmp_path / "nothing.slp")
