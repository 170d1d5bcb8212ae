"""Batched inference on frames and videos.

Video frames are decoded by OpenCV in a background thread into a bounded queue of uint8
batches; each batch goes to the device as uint8 and is converted (BGR to RGB), resized and
normalised there; peaks are decoded on the device and only (B, K, 3) numbers come back, so
memory stays flat however long the video.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from element_pose.engine.background import in_background
from element_pose.engine.checkpoint import file_sha256, load_model_file
from element_pose.engine.config import EngineConfig
from element_pose.engine.data import validate_images
from element_pose.engine.network import PoseNet, build_network, cpu_supports_bf16
from element_pose.engine.relations import RELATION_MIN_PEAK, RELATION_PEAKS, keep_relations
from element_pose.engine.separation import (
    ALTERNATIVE_MIN_CONFIDENCE,
    ALTERNATIVE_PEAKS,
    separate_parts,
)
from element_pose.engine.targets import decode, find_peaks
from element_pose.engine.video import VideoError, _open

logger = logging.getLogger(__name__)

__all__ = ["PoseModel", "VideoError", "file_sha256", "iter_video_batches", "load_model"]


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use 'cpu' or "
                         "'auto'.")
    return dev


class PoseModel:
    """A trained network ready for inference.

    Attributes
    ----------
    bodyparts : list of str
    config : EngineConfig
    device : str
    network : PoseNet
        The torch module (eval mode, on ``device``).
    separation : torch.Tensor or None
        (K, K) pixel radii of :mod:`element_pose.engine.separation`, applied when
        ``config.separate_parts``; None for a model file that has none.
    relations : torch.Tensor or None
        (R, 6) fixed coordinate differences and bounds of
        :mod:`element_pose.engine.relations`, kept
        when ``config.part_relations``; None for a model file that has none.
    """

    def __init__(self, network: PoseNet, config: EngineConfig, bodyparts: list[str],
                 device: str = "auto", separation: np.ndarray | None = None,
                 relations: np.ndarray | None = None):
        dev = _resolve_device(device)
        self.config = config
        self.bodyparts = list(bodyparts)
        self.device = str(dev)
        self._dev = dev
        self._channels_last = config.channels_last
        net = network.to(dev).eval()
        if self._channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.network = net
        self.separation = (torch.as_tensor(np.asarray(separation, dtype=np.float32), device=dev)
                           if separation is not None else None)
        rel = np.asarray(relations if relations is not None else [], dtype=np.float32)
        # rows of 6 (bounds marked); a model file written before bounds existed has rows of 5
        self.relations = (torch.as_tensor(rel.reshape(len(rel), -1), device=dev)
                          if len(rel) else None)
        # bfloat16 on a CPU only for a model trained with it (training found it faster) and
        # where oneDNN supports it; "auto" (a config never trained) stays float32
        self._amp = (config.mixed_precision if dev.type == "cuda" else
                     dev.type == "cpu" and config.cpu_bf16 is True and cpu_supports_bf16())
        self._amp_dtype = (torch.bfloat16 if dev.type == "cpu" or torch.cuda.is_bf16_supported()
                           else torch.float16) if self._amp else torch.bfloat16

    # -- core ------------------------------------------------------------------------

    @torch.inference_mode()
    def _infer(self, batch: torch.Tensor, bgr: bool = False) -> torch.Tensor:
        """(B, H, W, 3) uint8 on the device -> (B, K, 3) [x, y, conf] in original pixels."""
        x = batch.permute(0, 3, 1, 2)
        if bgr:
            x = x.flip(1)
        x = x.float()
        h, w = x.shape[-2:]
        scale = self.config.input_scale
        nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        if (nh, nw) != (h, w):
            if scale < 1:
                x = F.interpolate(x, size=(nh, nw), mode="area")
            else:
                x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
        x = self.network.normalize(x)
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self._dev.type, dtype=self._amp_dtype, enabled=self._amp):
            heat, off = self.network(x)
        stride = self.network.output_stride
        pose = decode(heat.float(), off.float(), stride)
        rx, ry = nw / w, nh / h
        pose[..., 0] = (pose[..., 0] + 0.5) / rx - 0.5
        pose[..., 1] = (pose[..., 1] + 0.5) / ry - 0.5
        relate = self.relations is not None and self.config.part_relations
        separate = self.separation is not None and self.config.separate_parts
        if relate or separate:
            peaks = find_peaks(heat.float(), off.float(), stride,
                               RELATION_PEAKS if relate else ALTERNATIVE_PEAKS,
                               RELATION_MIN_PEAK if relate else ALTERNATIVE_MIN_CONFIDENCE)
            peaks[..., 0] = (peaks[..., 0] + 0.5) / rx - 0.5
            peaks[..., 1] = (peaks[..., 1] + 0.5) / ry - 0.5
            # a part far off its fixed geometry first; then twins at one spot (strongest
            # peaks first, so the first few are what separation alone would look at)
            if relate:
                pose = keep_relations(pose, peaks, self.relations)
            if separate:
                pose = separate_parts(pose, peaks[:, :, :ALTERNATIVE_PEAKS], self.separation,
                                      self.relations if relate else None)
        return pose

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(array)
        if self._dev.type == "cuda":
            t = t.pin_memory()
        return t.to(self._dev, non_blocking=True)

    # -- public --------------------------------------------------------------------------

    def predict_frames(self, images: Sequence[np.ndarray], batch_size: int = 8) -> np.ndarray:
        """Predict keypoints on RGB uint8 frames (sizes may differ).

        Returns
        -------
        np.ndarray
            (N, K, 3) float32: x, y in each frame's pixels and confidence in [0, 1].
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        imgs = validate_images(images)
        out = np.zeros((len(imgs), len(self.bodyparts), 3), dtype=np.float32)
        for chunk, batch in batches_by_shape(imgs, batch_size):
            out[chunk] = self._infer(self._to_device(batch)).cpu().numpy()
        return out

    def predict_video(self, paths: str | Path | Sequence[str | Path], batch_size: int = 8,
                      progress: bool = True, stop: int | None = None,
                      resume_dir: str | Path | None = None, chunk_frames: int = 2048
                      ) -> tuple[np.ndarray, dict]:
        """Predict keypoints on every frame of one video or of several, concatenated in order.

        Parameters
        ----------
        paths : path or sequence of paths
            Video file(s) of one recording; frames are concatenated in the given order.
        batch_size : int
            Frames per forward pass.
        progress : bool
            Show a tqdm progress bar.
        stop : int, optional
            Analyse only the first ``stop`` frames (of the concatenation).
        resume_dir : str or Path, optional
            Folder for checkpointed output: every ``chunk_frames`` frames the poses so far are
            saved there, and a run that finds chunks there (of an earlier run of the same
            model, videos and batch size that was killed) decodes past them without running
            the network. Batches are formed exactly as in an uninterrupted run, so the result
            is identical. The caller removes the folder when it is done with it.
        chunk_frames : int
            Frames per saved chunk (rounded up to a multiple of ``batch_size``).

        Returns
        -------
        poses : np.ndarray
            (F, K, 3) float32 [x, y, confidence] in original pixels.
        stats : dict
            ``frames``, ``seconds`` (wall time), ``fps`` and ``compute_seconds`` (time the
            main thread spent in transfer, network and peak decoding).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if isinstance(paths, (str, Path)):
            paths = [paths]
        paths = [Path(p) for p in paths]
        if not paths:
            raise ValueError("No video given.")
        for p in paths:
            _open(p).release()  # fail early with a clear VideoError
        total = None
        try:
            total = sum(int(_frame_count_hint(p)) for p in paths) or None
        except Exception:  # pragma: no cover - header hints are best effort
            total = None
        if stop is not None:
            total = min(total, stop) if total else stop
        chunk_frames = max(1, -(-chunk_frames // batch_size)) * batch_size
        saved = _SavedChunks(resume_dir) if resume_dir is not None else None
        done = saved.frames if saved else 0
        bar = tqdm(total=total, desc="analyse", unit="frame", disable=not progress,
                   dynamic_ncols=True, initial=done)
        chunks: list[np.ndarray] = list(saved.arrays) if saved else []
        since_save: list[np.ndarray] = []  # results not yet in a saved chunk
        unsaved = 0
        pending: torch.Tensor | None = None  # copied back one batch later: overlaps transfers
        compute = 0.0
        frames = 0
        t0 = time.perf_counter()
        for batch in iter_video_batches(paths, batch_size, stop=stop):
            frames += len(batch)
            if frames <= done:
                continue  # analysed before an interruption: decoded only to keep batches aligned
            tc = time.perf_counter()
            pose = self._infer(self._to_device(batch), bgr=True)
            if pending is not None:
                since_save.append(pending.cpu().numpy())
            pending = pose
            compute += time.perf_counter() - tc
            bar.update(len(batch))
            unsaved += len(batch)
            if saved is not None and unsaved >= chunk_frames:
                since_save.append(pending.cpu().numpy())
                pending = None
                chunk = np.concatenate(since_save)
                saved.save(chunk)
                chunks.append(chunk)
                since_save, unsaved = [], 0
        if pending is not None:
            since_save.append(pending.cpu().numpy())
        chunks.extend(since_save)
        seconds = time.perf_counter() - t0
        bar.close()
        poses = (np.concatenate(chunks).astype(np.float32) if chunks else
                 np.zeros((0, len(self.bodyparts), 3), dtype=np.float32))
        stats = {"frames": int(frames), "seconds": float(seconds),
                 "fps": float(frames / seconds) if seconds > 0 else float("nan"),
                 "compute_seconds": float(compute)}
        logger.info("Analysed %d frames in %.1f s (%.1f frames/s)", frames, seconds,
                    stats["fps"])
        return poses, stats


class _SavedChunks:
    """Checkpointed video output: ``chunk_<first frame>.npy`` files, contiguous from frame 0."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.arrays: list[np.ndarray] = []
        self.frames = 0
        # Only finished chunks: a worker killed while saving leaves a ``*.tmp`` file behind.
        for path in sorted(self.folder.glob("chunk_*.npy")):
            if not re.fullmatch(r"chunk_\d{10}\.npy", path.name):
                continue
            if int(path.stem.split("_")[1]) != self.frames:
                break  # a gap: keep only what is contiguous
            array = np.load(path)
            self.arrays.append(array)
            self.frames += len(array)
        if self.frames:
            logger.info("Resuming video analysis at frame %d from %s", self.frames, self.folder)

    def save(self, poses: np.ndarray) -> None:
        """Append a chunk (written to a temporary name, then renamed: never half a file)."""
        path = self.folder / f"chunk_{self.frames:010d}.npy"
        tmp = self.folder / f"{path.name}.tmp"
        with open(tmp, "wb") as f:  # np.save on a path would append ".npy" to the name
            np.save(f, poses)
        tmp.replace(path)
        self.arrays.append(poses)
        self.frames += len(poses)


def _frame_count_hint(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    try:
        return max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT)))
    finally:
        cap.release()


def iter_video_batches(paths: Sequence[str | Path], batch_size: int, stop: int | None = None,
                       prefetch: int = 4) -> Iterator[np.ndarray]:
    """Yield (B, H, W, 3) uint8 **BGR** batches of consecutive frames, decoded in a thread.

    Frames of several files are concatenated; a batch never mixes frame sizes. The queue
    holds at most ``prefetch`` batches, so memory is bounded.
    """
    return in_background(_decode_batches(paths, batch_size, stop), prefetch, "element-pose-decode")


def _decode_batches(paths: Sequence[str | Path], batch_size: int, stop: int | None
                    ) -> Iterator[np.ndarray]:
    """Consecutive BGR frames of the files, in batches that never mix frame sizes."""
    count = 0
    for path in paths:
        cap = _open(path)
        try:
            buf: np.ndarray | None = None
            n = 0
            while stop is None or count < stop:
                ok, frame = cap.read()
                if not ok:
                    break
                if buf is not None and frame.shape != buf.shape[1:]:
                    yield buf[:n].copy()
                    buf, n = None, 0
                if buf is None:
                    buf = np.empty((batch_size, *frame.shape), dtype=np.uint8)
                buf[n] = frame
                n += 1
                count += 1
                if n == batch_size:
                    yield buf
                    buf, n = None, 0
            if buf is not None and n:
                yield buf[:n]
        finally:
            cap.release()
        if stop is not None and count >= stop:
            break


def batches_by_shape(images: Sequence[np.ndarray], batch_size: int
                     ) -> Iterator[tuple[list[int], np.ndarray]]:
    """Batches of frames of one size: (indices into ``images``, stacked (B, H, W, 3) array)."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        by_shape.setdefault(image.shape, []).append(i)
    for idx in by_shape.values():
        for s in range(0, len(idx), batch_size):
            chunk = idx[s:s + batch_size]
            yield chunk, np.stack([images[i] for i in chunk])


def load_model(checkpoint_path: str | Path, device: str = "auto") -> PoseModel:
    """Load a model file written by :func:`element_pose.engine.train.train`.

    Raises
    ------
    FileNotFoundError, ValueError
        Missing file, not an element-pose model file, or one of a newer format.
    """
    payload = load_model_file(checkpoint_path)
    if payload.get("multianimal"):
        raise ValueError(f"{checkpoint_path} holds a multi-animal model (individuals "
                         f"{payload.get('individuals')}); load it with "
                         "element_pose.engine.multianimal.load_multianimal_model (or "
                         "load_any_model), which detects several animals per frame.")
    return model_from_payload(payload, device, str(checkpoint_path))


def model_from_payload(payload: dict, device: str = "auto", source: str = "the model file"
                       ) -> PoseModel:
    """A :class:`PoseModel` from a loaded single-network payload (config, body parts,
    weights); ``source`` names it in errors."""
    config = EngineConfig.from_dict(payload["config"])
    bodyparts = list(payload["bodyparts"])
    network = build_network(config.replace(pretrained="none"), len(bodyparts))
    try:
        network.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"Weights in {source} do not fit its own config: {exc}") from exc
    extra = payload.get("extra", {})
    return PoseModel(network, config, bodyparts, device=device,
                     separation=extra.get("separation_px"), relations=extra.get("relations_px"))
