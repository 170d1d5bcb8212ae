"""In-memory labeled data, the common currency of every label reader.

Readers (DeepLabCut, SLEAP) return a :class:`LabeledData`; the database import and the
engine consume it. It holds no images, only where to find them, so large projects stay cheap
until a frame is actually read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np


@dataclass
class FrameSource:
    """Where one labeled frame's pixels come from.

    Either ``image_path`` (a PNG/JPEG on disk) or ``video_path`` + ``frame_index``.
    ``source_video`` names the recording a labeled image was extracted from (DeepLabCut's
    ``labeled-data/<video>/`` folder) when the pixels themselves come from ``image_path``.
    ``name`` is the frame's identifier inside its project, e.g. the DeepLabCut CSV row
    ``labeled-data/m4s1/img0001.png``; data splits refer to frames by it.
    """

    name: str
    image_path: Path | None = None
    video_path: Path | None = None
    frame_index: int | None = None
    source_video: str | None = None  # the recording the frame came from, when known

    def read(self) -> np.ndarray:
        """Return the frame as an RGB uint8 array of shape (height, width, 3)."""
        if self.image_path is not None:
            image = cv2.imread(str(self.image_path), cv2.IMREAD_COLOR)
            if image is None:
                raise OSError(
                    f"Cannot read image {self.image_path}: the file is missing or not an image. "
                    "Restore the file or remove its row from the labels."
                )
            return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        if self.video_path is not None and self.frame_index is not None:
            from element_pose.engine.video import read_frame

            return read_frame(self.video_path, self.frame_index)
        raise ValueError(f"Frame {self.name!r} has neither an image path nor a video frame.")


@dataclass
class LabeledData:
    """Keypoint labels for a set of frames.

    Attributes
    ----------
    bodyparts : list of str
        Body part names, in the order of the keypoint axis.
    individuals : list of str
        Individual (animal) names; single-animal data has one, ``"animal0"``.
    frames : list of FrameSource
        One entry per labeled frame.
    keypoints : np.ndarray
        float64 array (frames, individuals, bodyparts, 2) in pixels; NaN = not visible.
    scorer : str
        Who labeled the frames.
    skeleton : list of tuple of str
        Body-part pairs to draw as edges.
    source : str
        Where the labels were read from (a path), for provenance.
    """

    bodyparts: list[str]
    individuals: list[str]
    frames: list[FrameSource]
    keypoints: np.ndarray
    scorer: str = ""
    skeleton: list[tuple[str, str]] = field(default_factory=list)
    source: str = ""

    def __post_init__(self) -> None:
        expected = (len(self.frames), len(self.individuals), len(self.bodyparts), 2)
        if self.keypoints.shape != expected:
            raise ValueError(
                f"keypoints has shape {self.keypoints.shape}, expected {expected} "
                "(frames, individuals, bodyparts, xy)."
            )
        if len(set(self.bodyparts)) != len(self.bodyparts):
            raise ValueError(f"Duplicate body part names: {self.bodyparts}")
        if len({f.name for f in self.frames}) != len(self.frames):
            raise ValueError("Duplicate frame names in labeled data.")

    @property
    def frame_names(self) -> list[str]:
        """Frame identifiers in order."""
        return [f.name for f in self.frames]

    def __len__(self) -> int:
        return len(self.frames)
