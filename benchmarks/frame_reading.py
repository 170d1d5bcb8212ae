"""Reading labeled frames from a video: forward-decoding reader vs decoding from frame 0 each
time (the reader before), on the SLEAP fly clip (1500 frames, 1024x1024).

Usage::

    python benchmarks/frame_reading.py [--frames 100 400 700 1000 1400]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from element_pose.engine.video import iter_frames, read_frame  # noqa: E402

CLIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "sleap-fly-clip" / "clip.mp4"


def from_start(path: Path, index: int) -> np.ndarray:
    """The old way: decode from the first frame up to ``index``."""
    for i, frame in enumerate(iter_frames(path)):
        if i == index:
            return frame
    raise IndexError(index)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, nargs="+", default=[100, 400, 700, 1000, 1400])
    ap.add_argument("--video", default=str(CLIP))
    args = ap.parse_args()
    video = Path(args.video)
    t0 = time.perf_counter()
    old = [from_start(video, i) for i in args.frames]
    t_old = time.perf_counter() - t0
    t0 = time.perf_counter()
    new = [read_frame(video, i) for i in args.frames]
    t_new = time.perf_counter() - t0
    assert all(np.array_equal(a, b) for a, b in zip(old, new, strict=True))
    print(f"{len(args.frames)} frames of {video.name}: decode from 0 each time {t_old:.2f} s, "
          f"forward reader {t_new:.2f} s ({t_old / t_new:.1f}x), identical pixels")


if __name__ == "__main__":
    main()
