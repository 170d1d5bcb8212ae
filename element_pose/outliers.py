"""Finding the frames a model gets wrong, without ground truth (pure NumPy, no database).

Four signals per frame, each where a mistake shows (DeepLabCut's ``extract_outlier_frames``
offers the first three as separate methods; here they are combined):

* ``likelihood``: the mean over body parts of ``1 - likelihood`` (unsure predictions);
* ``jump`` (px): the largest over body parts of ``min(|p[t] - p[t-1]|, |p[t] - p[t+1]|)``,
  a point that leaves its track for one frame and comes back (a swap or a false detection);
* ``filter`` (px): the largest distance between a body part and its running median over
  ``filter_window`` frames (disagreement with the filtered trajectory);
* ``ensemble`` (px): the largest distance between this model's prediction and another
  model's (e.g. the same training with another seed), averaged over the reference models;
  where two independently trained models disagree, at least one is wrong.

Each signal is turned into a robust z-score over the recording (``(v - median) / (1.4826 MAD +
floor)``, negative values set to 0) so that pixels and likelihoods can be added; the weighted
sum is the frame's score. :func:`pick_spread` then takes the K highest-scoring frames at least
``min_gap`` frames apart, so a single bad second of video does not fill the whole selection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .filtering import rolling_filter
from .params import DictParams

SIGNALS = ("likelihood", "jump", "filter", "ensemble")
#: Smallest spread used by the robust z-score, per signal: below it differences are noise.
_FLOOR = {"likelihood": 0.02, "jump": 0.5, "filter": 0.5, "ensemble": 0.5}


@dataclass(frozen=True)
class OutlierParams(DictParams):
    """Validated parameters of :func:`score_frames` and :func:`pick_spread`.

    Attributes
    ----------
    n_frames : int, default 20
        Frames to pick.
    weights : dict, default 1 for each signal
        Weight of each signal in the score (``likelihood``, ``jump``, ``filter``,
        ``ensemble``); 0 leaves a signal out, signals not named keep weight 1.
    filter_window : int, default 7
        Running-median window (odd number of frames) of the ``filter`` signal.
    min_gap : int or None, default None
        Least distance in frames between two picks; ``None`` = ``frames / (4 n_frames)``.
    """

    _what = "outlier"

    n_frames: int = 20
    weights: dict = field(default_factory=lambda: dict.fromkeys(SIGNALS, 1.0))
    filter_window: int = 7
    min_gap: int | None = None

    def __post_init__(self) -> None:
        def is_int(value: Any) -> bool:
            return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

        if not is_int(self.n_frames) or self.n_frames < 1:
            raise ValueError(f"Outlier parameter n_frames={self.n_frames!r} is invalid: expected a "
                             "positive integer (e.g. 20).")
        if not isinstance(self.weights, Mapping):
            raise ValueError(f"Outlier parameter weights={self.weights!r} is invalid: expected a dict "
                             f"of signal -> weight, signals {SIGNALS}.")
        unknown = sorted(set(self.weights) - set(SIGNALS))
        if unknown:
            raise ValueError(f"Unknown outlier signal(s) {unknown} in weights; use {SIGNALS}.")
        weights = dict.fromkeys(SIGNALS, 1.0) | dict(self.weights)  # unnamed signals keep 1
        for name, value in weights.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"Outlier weight {name}={value!r} is invalid: expected a number >= 0.")
        if not any(weights.values()):
            raise ValueError("All outlier weights are 0; give at least one signal a positive weight.")
        object.__setattr__(self, "weights", {k: float(v) for k, v in weights.items()})
        if not is_int(self.filter_window) or self.filter_window < 3 or self.filter_window % 2 == 0:
            raise ValueError(f"Outlier parameter filter_window={self.filter_window!r} is invalid: "
                             "expected an odd integer >= 3 (frames).")
        if self.min_gap is not None and (not is_int(self.min_gap) or self.min_gap < 0):
            raise ValueError(f"Outlier parameter min_gap={self.min_gap!r} is invalid: expected an "
                             "integer >= 0 (frames) or None.")


def _check_pose(pose: np.ndarray, name: str = "pose") -> np.ndarray:
    pose = np.asarray(pose, dtype=np.float64)
    if pose.ndim != 3 or pose.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (frames, body parts, 3) = [x, y, likelihood], "
                         f"got {pose.shape}.")
    return pose


def _max_over_parts(values: np.ndarray) -> np.ndarray:
    """Largest finite value per frame of a (frames, parts) array; 0 where none is finite."""
    filled = np.where(np.isfinite(values), values, -np.inf)
    out = filled.max(axis=1)
    return np.where(np.isfinite(out), out, 0.0)


def signals(pose: np.ndarray, references: Sequence[np.ndarray] = (), filter_window: int = 7
            ) -> dict[str, np.ndarray]:
    """Raw per-frame signals (see the module docstring), each a float64 array (frames,).

    ``ensemble`` is present only when ``references`` (pose arrays of the same recording and
    body parts from other models) are given.
    """
    pose = _check_pose(pose)
    xy, likelihood = pose[..., :2], pose[..., 2]
    n = len(pose)
    out = {"likelihood": np.nanmean(np.where(np.isfinite(likelihood), 1.0 - likelihood, 1.0), axis=1)}
    step = np.linalg.norm(np.diff(xy, axis=0), axis=-1)  # (n-1, parts)
    before = np.vstack([np.full((1, xy.shape[1]), np.nan), step])
    after = np.vstack([step, np.full((1, xy.shape[1]), np.nan)])
    jump = np.fmin(before, after)  # a spike moves away *and* back
    out["jump"] = _max_over_parts(jump)
    window = min(filter_window, n if n % 2 else n - 1)
    smooth = rolling_filter(xy, window, "median", min_periods=1) if window >= 1 else xy
    out["filter"] = _max_over_parts(np.linalg.norm(xy - smooth, axis=-1))
    if references:
        disagreement = []
        for i, ref in enumerate(references):
            ref = _check_pose(ref, f"reference {i}")
            if ref.shape != pose.shape:
                raise ValueError(f"Reference {i} has shape {ref.shape} but the pose has {pose.shape}: "
                                 "references must cover the same frames and body parts.")
            disagreement.append(_max_over_parts(np.linalg.norm(xy - ref[..., :2], axis=-1)))
        out["ensemble"] = np.mean(disagreement, axis=0)
    return out


def robust_z(values: np.ndarray, floor: float) -> np.ndarray:
    """``max(0, (v - median) / (1.4826 MAD + floor))``: how unusual each frame is."""
    median = np.median(values)
    mad = np.median(np.abs(values - median))
    return np.maximum(0.0, (values - median) / (1.4826 * mad + floor))


@dataclass
class FrameScores:
    """Outcome of :func:`score_frames`, per frame."""

    score: np.ndarray                      # (frames,) weighted sum of robust z-scores
    signals: dict[str, np.ndarray]         # raw signals by name (see :func:`signals`)
    contributions: dict[str, np.ndarray]   # each signal's weighted z-score

    def main_signal(self, frame: int) -> str:
        """The signal that contributed most to a frame's score."""
        return max(self.contributions, key=lambda name: self.contributions[name][frame])


def score_frames(pose: np.ndarray, references: Sequence[np.ndarray] = (),
                 params: OutlierParams | Mapping[str, Any] | None = None) -> FrameScores:
    """Per-frame outlier score of a pose array (see the module docstring)."""
    params = OutlierParams.from_dict(params)
    raw = signals(pose, references, params.filter_window)
    contributions = {name: params.weights[name] * robust_z(values, _FLOOR[name])
                     for name, values in raw.items() if params.weights[name]}
    score = np.sum(list(contributions.values()), axis=0)
    return FrameScores(score=score, signals=raw, contributions=contributions)


def pick_spread(score: np.ndarray, n: int, min_gap: int | None = None,
                candidates: Sequence[int] | None = None) -> np.ndarray:
    """The ``n`` highest-scoring frames, at least ``min_gap`` frames apart where possible.

    Parameters
    ----------
    score : np.ndarray
        Per-frame scores (frames,).
    n : int
        Frames to pick.
    min_gap : int, optional
        Default ``len(score) // (4 n)``. When too few frames are that far apart, the best of
        the rest fill the selection.
    candidates : sequence of int, optional
        Only these frame indices may be picked (e.g. frames with ground truth).

    Returns
    -------
    np.ndarray
        int64 frame indices, highest score first.
    """
    score = np.asarray(score, dtype=np.float64)
    pool = np.arange(len(score)) if candidates is None else np.unique(np.asarray(candidates, dtype=np.int64))
    if len(pool) and (pool.min() < 0 or pool.max() >= len(score)):
        raise ValueError(f"candidates must be frame indices in [0, {len(score)}).")
    gap = len(score) // (4 * max(n, 1)) if min_gap is None else int(min_gap)
    order = pool[np.argsort(-score[pool], kind="stable")]
    picked: list[int] = []
    for index in order:
        if len(picked) == n:
            break
        if all(abs(int(index) - p) >= gap for p in picked):
            picked.append(int(index))
    for index in order:  # not enough frames far apart: take the best remaining
        if len(picked) == n:
            break
        if int(index) not in picked:
            picked.append(int(index))
    return np.asarray(picked, dtype=np.int64)
