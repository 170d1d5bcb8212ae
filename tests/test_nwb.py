"""NWB export (ndx-pose) and read-back."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest

from element_pose.io.nwb import export_nwb, read_nwb_pose, read_nwb_skeleton

BODYPARTS = ["snout", "leftear", "rightear", "tailbase"]
EDGES = [("snout", "leftear"), ("snout", "rightear"), ("leftear", "tailbase")]
START = datetime(2024, 5, 17, 9, 30, tzinfo=timezone.utc)


def _pose(n_frames: int = 50) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    pose = np.empty((n_frames, len(BODYPARTS), 3))
    pose[..., :2] = rng.uniform(0, 640, (n_frames, len(BODYPARTS), 2))
    pose[..., 2] = rng.uniform(0, 1, (n_frames, len(BODYPARTS)))
    pose[3, 1, :2] = np.nan
    pose[10:14, 2, :] = np.nan
    timestamps = 12.5 + np.arange(n_frames) / 30.0
    return pose, timestamps


def test_round_trip(tmp_path):
    pose, timestamps = _pose()
    target = tmp_path / "session" / "pose.nwb"
    out = export_nwb(target, pose, BODYPARTS, timestamps, skeleton_edges=EDGES, subject_id="mouse7",
                     subject={"species": "Mus musculus", "sex": "F", "age": "P90D"},
                     session_start_time=START, source_software_version="0.1.0",
                     model_name="resnet50_openfield", scorer="DLC_resnet50",
                     nwbfile_fields={"experimenter": ["Doe, Jane"], "lab": "Pose lab"})
    assert out == target and target.is_file()
    assert sorted(p.name for p in target.parent.iterdir()) == ["pose.nwb"]
    got, parts, stamps = read_nwb_pose(target)
    assert parts == BODYPARTS
    assert got.shape == pose.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(pose))
    np.testing.assert_array_equal(got, pose)  # exact float64, NaN in the same places
    np.testing.assert_array_equal(stamps, timestamps)
    assert read_nwb_skeleton(target) == EDGES

    from ndx_pose import PoseEstimation
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(target), "r") as io:
        nwbfile = io.read()
        estimation = nwbfile.processing["behavior"]["PoseEstimation"]
        assert isinstance(estimation, PoseEstimation)
        assert estimation.scorer == "DLC_resnet50"
        assert estimation.source_software == "element-pose"
        assert estimation.source_software_version == "0.1.0"
        assert "resnet50_openfield" in estimation.description
        skeleton = nwbfile.processing["behavior"]["Skeletons"]["subject"]
        assert list(skeleton.nodes[:]) == BODYPARTS
        assert skeleton.subject.subject_id == "mouse7"
        assert nwbfile.subject.species == "Mus musculus"
        assert nwbfile.session_start_time == START
        assert list(nwbfile.experimenter) == ["Doe, Jane"] and nwbfile.lab == "Pose lab"
        series = estimation.pose_estimation_series["snout"]
        assert series.unit == "pixels"
        assert series.timestamps_unit == "seconds"


def test_existing_path_refused(tmp_path):
    pose, timestamps = _pose(5)
    target = tmp_path / "pose.nwb"
    target.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match=r"pose.nwb already exists; pass overwrite=True"):
        export_nwb(target, pose, BODYPARTS, timestamps, session_start_time=START)
    assert target.read_bytes() == b"keep me"
    export_nwb(target, pose, BODYPARTS, timestamps, session_start_time=START, overwrite=True)
    np.testing.assert_array_equal(read_nwb_pose(target)[0], pose)
    assert read_nwb_skeleton(target) == []


def test_invalid_inputs_write_nothing(tmp_path):
    pose, timestamps = _pose(5)
    target = tmp_path / "pose.nwb"
    with pytest.raises(ValueError, match=r"timestamps has shape \(4,\); expected \(5,\)"):
        export_nwb(target, pose, BODYPARTS, timestamps[:4], session_start_time=START)
    with pytest.raises(ValueError, match="'nose'"):
        export_nwb(target, pose, BODYPARTS, timestamps, skeleton_edges=[("nose", "snout")],
                   session_start_time=START)
    with pytest.raises(ValueError, match="non-decreasing"):
        export_nwb(target, pose, BODYPARTS, timestamps[::-1], session_start_time=START)
    with pytest.raises(ValueError, match="expected 3 x 3"):
        export_nwb(target, pose, BODYPARTS[:3], timestamps, session_start_time=START)
    assert list(tmp_path.iterdir()) == []


def test_multi_animal_and_video_link(tmp_path):
    video = tmp_path / "videos" / "rec.mp4"
    video.parent.mkdir()
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (64, 48))
    for _ in range(6):
        writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.release()
    pose, timestamps = _pose(6)
    both = np.stack([pose, pose + 1.0], axis=1)  # (F, 2 animals, K, 3)
    target = tmp_path / "out" / "multi.nwb"
    export_nwb(target, both, BODYPARTS, timestamps, individuals=["female", "male"],
               skeleton_edges=EDGES, session_start_time=datetime(2024, 1, 2, 3, 4),
               video_paths=[video])
    with pytest.raises(ValueError, match="several PoseEstimation objects"):
        read_nwb_pose(target)
    male, parts, stamps = read_nwb_pose(target, name="PoseEstimation_male")
    np.testing.assert_array_equal(male, pose + 1.0)
    female, _, _ = read_nwb_pose(target, name="PoseEstimation_female")
    np.testing.assert_array_equal(female, pose)
    assert read_nwb_skeleton(target, name="PoseEstimation_male") == EDGES

    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(target), "r") as io:
        nwbfile = io.read()
        source = nwbfile.acquisition["source_video"]
        assert list(source.external_file[:]) == ["../videos/rec.mp4"]
        assert (target.parent / source.external_file[0]).resolve() == video.resolve()
        assert list(source.dimension[:]) == [64, 48]
        estimation = nwbfile.processing["behavior"]["PoseEstimation_female"]
        assert estimation.source_video.name == "source_video"
        assert sorted(nwbfile.processing["behavior"]["Skeletons"].skeletons) == ["female", "male"]
        # timestamps are stored once and linked by every other series
        male_tail = nwbfile.processing["behavior"]["PoseEstimation_male"]["tailbase"]
        np.testing.assert_array_equal(male_tail.timestamps[:], timestamps)
        linked = male_tail.fields["timestamps"]
        assert (linked.name, linked.parent.name) == ("snout", "PoseEstimation_female")


def test_read_missing(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="NWB file not found"):
        read_nwb_pose(tmp_path / "none.nwb")
