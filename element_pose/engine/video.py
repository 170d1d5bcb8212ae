"""Video probing and frame decoding with OpenCV (no database, no torch)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


class VideoError(ValueError):
    """A video file that is missing, unreadable, or not a video."""


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` measures about one video file.

    ``frame_count`` is the number of frames that actually decode, which can differ from the
    count in the container header (truncated or badly muxed files).
    """

    path: Path
    width: int
    height: int
    frame_count: int
    header_frame_count: int
    fps: float
    codec: str
    timestamps: np.ndarray  # seconds from the first frame, float64, one per frame

    @property
    def duration(self) -> float:
        """Duration in seconds (frame count / fps)."""
        return self.frame_count / self.fps if self.fps > 0 else float("nan")


def _open(path: str | Path) -> cv2.VideoCapture:
    path = Path(path)
    if not path.is_file():
        raise VideoError(
            f"Video file not found: {path}. Check the path (and the root directory it is "
            "resolved against) or restore the file."
        )
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise VideoError(
            f"Cannot open {path} as a video: OpenCV/FFmpeg does not recognise the file. "
            "Check that it is a video (e.g. .mp4, .avi) and not truncated; re-encode it with "
            "ffmpeg if needed."
        )
    return capture


def probe_video(path: str | Path, progress: bool = False) -> VideoInfo:
    """Measure a video: size, decodable frame count, fps, codec and per-frame timestamps.

    Every frame is grabbed once (demuxed and decoded, not converted), so the frame count is
    exact even when the container header is wrong.

    Raises
    ------
    VideoError
        If the file is missing, not a video, or has no decodable frame.
    """
    path = Path(path)
    capture = _open(path)
    try:
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        header_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        fourcc = int(capture.get(cv2.CAP_PROP_FOURCC))
        codec = "".join(chr((fourcc >> (8 * i)) & 0xFF) for i in range(4)).strip("\x00 ")
        stamps: list[float] = []
        bar = tqdm(total=max(header_count, 0) or None, desc=f"probe {path.name}",
                   unit="frame", disable=not progress, leave=False)
        while capture.grab():
            stamps.append(capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0)
            bar.update(1)
        bar.close()
    finally:
        capture.release()
    count = len(stamps)
    if count == 0 or width <= 0 or height <= 0:
        raise VideoError(
            f"{path} has no decodable video frame: it is empty, truncated or not a video. "
            "Re-export or re-encode the recording."
        )
    if count != header_count:
        logger.warning("%s: header says %d frames, %d decode; using %d.", path, header_count,
                       count, count)
    if not fps > 0:
        raise VideoError(f"{path} reports no frame rate; re-encode it with a fixed fps.")
    timestamps = np.asarray(stamps, dtype=np.float64)
    timestamps -= timestamps[0]
    expected = np.arange(count) / fps
    # Container timestamps are kept when sane (strictly increasing); otherwise frame index / fps.
    if count > 1 and not np.all(np.diff(timestamps) > 0):
        timestamps = expected
    return VideoInfo(path, width, height, count, header_count, fps, codec, timestamps)


def iter_frames(path: str | Path, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
    """Yield RGB uint8 frames ``start <= i < stop`` of a video, in order."""
    capture = _open(path)
    try:
        if start:
            capture.set(cv2.CAP_PROP_POS_FRAMES, start)
        index = start
        while stop is None or index < stop:
            ok, frame = capture.read()
            if not ok:
                break
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        capture.release()


class _ForwardReader:
    """An open video that decodes forward from where the last read stopped."""

    def __init__(self, path: Path):
        self.path = path
        self.capture = _open(path)
        self.position = 0  # index of the next frame read() returns

    def read(self, index: int) -> np.ndarray:
        if index < self.position:  # backwards: start over (exact for every codec)
            self.capture.release()
            self.capture = _open(self.path)
            self.position = 0
        while self.position < index:  # grab() skips the colour conversion of unused frames
            if not self.capture.grab():
                raise VideoError(f"{self.path} has no frame {index} (it ends at {self.position}).")
            self.position += 1
        ok, frame = self.capture.read()
        if not ok:
            raise VideoError(f"{self.path} has no frame {index} (it ends at {self.position}).")
        self.position += 1
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        self.capture.release()


_readers: dict[tuple, _ForwardReader] = {}
_readers_lock = threading.Lock()
_MAX_OPEN = 4


def read_frame(path: str | Path, index: int) -> np.ndarray:
    """Return frame ``index`` of a video as RGB uint8.

    Frames are decoded, never sought (seeking is not frame-exact for every codec), but a
    few videos stay open and decode forward from the last frame read, so reading labeled
    frames in order costs one pass over the video instead of one pass per frame.
    """
    path = Path(path)
    if index < 0:
        raise VideoError(f"Frame index must be >= 0, got {index} for {path}.")
    try:
        stat = path.stat()
    except OSError:
        _open(path)  # raises the VideoError that names the problem
        raise
    key = (path.resolve(), stat.st_mtime_ns, stat.st_size)  # a rewritten file is reopened
    with _readers_lock:
        reader = _readers.pop(key, None)
        if reader is None:
            reader = _ForwardReader(path)
            while len(_readers) >= _MAX_OPEN:
                _readers.pop(next(iter(_readers))).close()
        _readers[key] = reader  # most recently used last
        try:
            return reader.read(index)
        except Exception:
            _readers.pop(key, None)
            reader.close()
            raise
