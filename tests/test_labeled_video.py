"""Labeled videos: render on a generated gray video, decode back and look at the pixels."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from element_pose.engine.video import iter_frames, probe_video
from element_pose.labeled_video import FADE_ALPHA, bodypart_colors, draw_pose, write_labeled_video

WIDTH, HEIGHT, GRAY = 160, 128, 128
BODYPARTS = ["snout", "ear", "tail"]


def _gray_video(path: Path, n_frames: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (WIDTH, HEIGHT))
    assert writer.isOpened()
    for _ in range(n_frames):
        writer.write(np.full((HEIGHT, WIDTH, 3), GRAY, dtype=np.uint8))
    writer.release()
    return path


def _pose(n_frames: int) -> np.ndarray:
    pose = np.zeros((n_frames, 3, 3))
    for f in range(n_frames):
        pose[f, 0] = [30 + 5 * f, 40, 0.95]   # snout moves right
        pose[f, 1] = [100, 30 + 4 * f, 0.9]   # ear moves down
        pose[f, 2] = [80, 100, 0.1]           # tail below the cut-off
    return pose


def test_bodypart_colors():
    colors = bodypart_colors(BODYPARTS, "jet")
    assert len(colors) == 3
    assert colors[0] == (0, 0, 128)      # jet(0): dark blue
    assert colors[2] == (128, 0, 0)      # jet(1): dark red
    assert bodypart_colors(["a", "b", "c", "d"], "jet")[0] == colors[0]
    assert all(0 <= c <= 255 for rgb in colors for c in rgb)
    with pytest.raises(ValueError, match="colormap='nope'"):
        bodypart_colors(BODYPARTS, "nope")


def test_draw_pose_pixels():
    frame = np.full((HEIGHT, WIDTH, 3), GRAY, dtype=np.uint8)
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    pose_frame = np.array([[20.0, 20.0, 0.9], [60.0, 20.0, 0.3], [np.nan, np.nan, 0.99]])
    out = draw_pose(frame, pose_frame, colors, pcutoff=0.6, dot_radius=5)
    assert out.shape == frame.shape and out is not frame
    assert tuple(out[20, 20]) == (255, 0, 0)
    assert tuple(out[20, 60]) == (GRAY, GRAY, GRAY)        # hidden below the cut-off
    assert np.all(frame == GRAY)                          # input untouched
    # a NaN point changes nothing: only the one dot differs from the background
    changed = np.argwhere((out != GRAY).any(axis=2))
    assert changed[:, 0].min() >= 14 and changed[:, 0].max() <= 26
    assert changed[:, 1].min() >= 14 and changed[:, 1].max() <= 26
    faded = draw_pose(frame, pose_frame, colors, pcutoff=0.6, dot_radius=5, hide_below_cutoff=False)
    expected = np.round(FADE_ALPHA * np.array([0, 255, 0]) + (1 - FADE_ALPHA) * GRAY)
    np.testing.assert_allclose(faded[20, 60], expected, atol=1)
    assert tuple(faded[20, 20]) == (255, 0, 0)
    # skeleton line between the two visible points, in the skeleton colour
    linked = draw_pose(frame, pose_frame, colors, pcutoff=None, dot_radius=3, line_thickness=3,
                       skeleton=[("a", "b")], bodyparts=["a", "b", "c"],
                       skeleton_color=(255, 255, 0))
    assert tuple(linked[20, 40]) == (255, 255, 0)
    with pytest.raises(ValueError, match="'x', which is not a body part"):
        draw_pose(frame, pose_frame, colors, skeleton=[("a", "x")], bodyparts=["a", "b", "c"])


def test_write_labeled_video_round_trip(tmp_path):
    n_frames = 6
    video = _gray_video(tmp_path / "gray.mp4", n_frames)
    pose = _pose(n_frames)
    out = write_labeled_video(video, pose, BODYPARTS, tmp_path / "out" / "labeled.mp4",
                              pcutoff=0.6, skeleton=[("snout", "ear")], dot_radius=7,
                              progress=False)
    assert out == tmp_path / "out" / "labeled.mp4"
    assert sorted(p.name for p in out.parent.iterdir()) == ["labeled.mp4"]  # no temp file left
    info = probe_video(out)
    assert (info.frame_count, info.width, info.height) == (n_frames, WIDTH, HEIGHT)
    assert info.fps == pytest.approx(25.0)
    colors = np.array(bodypart_colors(BODYPARTS, "jet"), dtype=float)
    frames = list(iter_frames(out))
    assert len(frames) == n_frames
    for f, frame in enumerate(frames):
        for k in (0, 1):
            x, y = pose[f, k, :2].astype(int)
            patch = frame[y - 2 : y + 3, x - 2 : x + 3].reshape(-1, 3).astype(float)
            np.testing.assert_allclose(patch.mean(axis=0), colors[k], atol=30)
        x, y = pose[f, 2, :2].astype(int)  # below the cut-off: background
        patch = frame[y - 2 : y + 3, x - 2 : x + 3].reshape(-1, 3).astype(float)
        np.testing.assert_allclose(patch.mean(axis=0), GRAY, atol=12)
        # far from every point: background
        np.testing.assert_allclose(frame[120, 5].astype(float), GRAY, atol=12)


def test_concatenated_files_and_fade(tmp_path):
    first = _gray_video(tmp_path / "part1.mp4", 3)
    second = _gray_video(tmp_path / "part2.mp4", 2)
    pose = _pose(5)
    out = write_labeled_video([first, second], pose, BODYPARTS, tmp_path / "both.mp4",
                              dot_radius=7, hide_below_cutoff=False, progress=False)
    frames = list(iter_frames(out))
    assert len(frames) == 5
    colors = np.array(bodypart_colors(BODYPARTS, "jet"), dtype=float)
    x, y = pose[4, 0, :2].astype(int)  # last frame comes from the second file
    np.testing.assert_allclose(frames[4][y - 2 : y + 3, x - 2 : x + 3].reshape(-1, 3).mean(axis=0),
                               colors[0], atol=30)
    x, y = pose[4, 2, :2].astype(int)  # faded tail
    expected = FADE_ALPHA * colors[2] + (1 - FADE_ALPHA) * GRAY
    np.testing.assert_allclose(frames[4][y - 2 : y + 3, x - 2 : x + 3].reshape(-1, 3).mean(axis=0),
                               expected, atol=20)


def test_frame_count_mismatch_writes_nothing(tmp_path):
    video = _gray_video(tmp_path / "gray.mp4", 4)
    target = tmp_path / "labeled.mp4"
    with pytest.raises(ValueError, match="pose has 5 frames but the video decodes to 4 frames"):
        write_labeled_video(video, _pose(5), BODYPARTS, target, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gray.mp4"]
    with pytest.raises(ValueError, match="bodyparts names 2"):
        write_labeled_video(video, _pose(4), BODYPARTS[:2], target, progress=False)
    with pytest.raises(ValueError, match="must end in .mp4"):
        write_labeled_video(video, _pose(4), BODYPARTS, tmp_path / "labeled.avi", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gray.mp4"]


def test_labeled_video_is_h264_that_browsers_play(tmp_path):
    """MPEG-4 Part 2 does not play in browsers; H.264 (yuv420p) does. Odd sizes are padded."""
    import imageio_ffmpeg

    src = tmp_path / "odd.avi"  # lossless, odd-sized (OpenCV's writer rounds sizes to even)
    writer = imageio_ffmpeg.write_frames(str(src), (65, 47), fps=25.0, codec="ffv1",
                                         macro_block_size=1, pix_fmt_out="bgr0")
    writer.send(None)
    for _ in range(5):
        writer.send(np.full((47, 65, 3), GRAY, dtype=np.uint8))
    writer.close()
    assert (probe_video(src).width, probe_video(src).height) == (65, 47)
    pose = np.tile(np.array([[[30.0, 20.0, 1.0]]]), (5, 1, 1))
    out = write_labeled_video(src, pose, ["a"], tmp_path / "labeled.mp4", progress=False)
    info = probe_video(out)
    assert info.codec.lower() in ("avc1", "h264")
    assert (info.frame_count, info.width, info.height) == (5, 66, 48)
    with open(out, "rb") as f:  # +faststart: the index (moov) comes before the media data
        head = f.read(4096)
    assert head.find(b"moov") != -1 and (head.find(b"mdat") == -1 or head.find(b"moov") < head.find(b"mdat"))
