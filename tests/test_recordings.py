"""Video recordings: RecordingInfo measured from real (generated) videos."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_video

from element_pose.engine.video import VideoError, iter_frames, probe_video


def test_probe_video(tmp_path):
    path = write_video(tmp_path / "a.mp4", 30, width=64, height=48, fps=25.0)
    info = probe_video(path)
    assert (info.width, info.height, info.frame_count) == (64, 48, 30)
    assert info.fps == pytest.approx(25.0)
    assert info.duration == pytest.approx(1.2)
    np.testing.assert_allclose(info.timestamps, np.arange(30) / 25.0, atol=1e-6)
    frames = list(iter_frames(path, start=5, stop=8))
    assert len(frames) == 3
    assert frames[0][12, 10 + 2] .min() > 150  # frame 5's square starts at x=10


def test_truncated_avi_counts_decodable_frames(tmp_path):
    path = write_video(tmp_path / "t.avi", 40, fourcc="MJPG")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    info = probe_video(path)
    assert info.header_frame_count == 40
    assert 0 < info.frame_count < 40
    assert info.frame_count == sum(1 for _ in iter_frames(path))


@pytest.mark.parametrize("content, message", [(None, "not found"), (b"this is not a video", "no decodable|Cannot open")])
def test_bad_video_errors(tmp_path, content, message):
    path = tmp_path / "bad.mp4"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(VideoError, match=message):
        probe_video(path)


def test_recording_info_multi_file(pipeline, session_key, data_root):
    model = pipeline.model
    first = write_video(data_root / "rec1" / "part1.mp4", 20, fps=20.0)
    second = write_video(data_root / "rec1" / "part2.mp4", 10, fps=20.0)
    key = model.VideoRecording.add(session_key, 1, {"device": "cam0"}, [first, second])
    stored = [r["file_path"] for r in (model.VideoRecording.File & key).to_dicts(order_by="file_id")]
    assert stored == ["rec1/part1.mp4", "rec1/part2.mp4"]  # relative to the root data directory
    model.RecordingInfo.populate(key)
    info = (model.RecordingInfo & key).fetch1()
    assert info["frame_count"] == 30
    assert info["file_frame_counts"] == [20, 10]
    assert (info["px_width"], info["px_height"]) == (64, 48)
    assert info["fps"] == pytest.approx(20.0)
    assert info["duration"] == pytest.approx(1.5)
    timestamps = np.asarray(info["timestamps"])
    np.testing.assert_allclose(timestamps, np.arange(30) / 20.0, atol=1e-6)


def test_recording_bad_files_insert_nothing(pipeline, session_key, data_root):
    model = pipeline.model
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        model.VideoRecording.add(session_key, 2, {"device": "cam0"}, ["rec2/missing.mp4"])
    assert not model.VideoRecording & {**session_key, "recording_id": 2}

    fake = data_root / "rec3" / "notes.mp4"
    fake.parent.mkdir(parents=True, exist_ok=True)
    fake.write_text("not a video")
    key = model.VideoRecording.add(session_key, 3, {"device": "cam0"}, [fake])
    with pytest.raises(VideoError, match="notes.mp4"):
        model.RecordingInfo.populate(key)
    assert not model.RecordingInfo & key

    with pytest.raises(TypeError, match="recording_id"):
        model.VideoRecording.add(session_key, "4", {"device": "cam0"}, [fake])


def test_recording_files_must_share_frame_rate(pipeline, session_key, data_root):
    model = pipeline.model
    a = write_video(data_root / "rec5" / "a.mp4", 10, fps=20.0)
    b = write_video(data_root / "rec5" / "b.mp4", 10, fps=25.0)
    key = model.VideoRecording.add(session_key, 5, {"device": "cam0"}, [a, b])
    with pytest.raises(VideoError, match="frame rate"):
        model.RecordingInfo.populate(key)
    assert not model.RecordingInfo & key


def test_read_frame_any_order_equals_sequential_decoding(tmp_path):
    """Labeled frames are read from an open video decoding forward (one pass for frames in
    order); backwards and repeated reads are exact too, and a rewritten file is reopened."""
    from element_pose.engine.video import iter_frames, read_frame

    path = write_video(tmp_path / "v.mp4", 40)
    frames = list(iter_frames(path))
    for index in (3, 4, 17, 39, 2, 17, 0, 38):
        assert np.array_equal(read_frame(path, index), frames[index]), index
    with pytest.raises(VideoError, match="no frame 40"):
        read_frame(path, 40)
    write_video(path, 12, width=32, height=24)  # the same path, other content
    assert read_frame(path, 5).shape == (24, 32, 3)
