"""Self-contained model files, resumable training checkpoints and file hashing."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import torch

#: Version of the model-file layout written by :func:`save_model_file`.
FORMAT_VERSION = 1
MODEL_KIND = "element-pose/posenet"
_CKPT = re.compile(r"^checkpoint_(\d{8})\.pt$")


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (read in chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename, so a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_model_file(path: str | Path, state_dict: dict, config: dict, bodyparts: list[str],
                    extra: dict | None = None) -> Path:
    """Write a self-contained model file: weights (on CPU), config dict, body parts, version."""
    path = Path(path)
    payload = {
        "kind": MODEL_KIND,
        "format_version": FORMAT_VERSION,
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "config": config,
        "bodyparts": list(bodyparts),
        "extra": extra or {},
    }
    atomic_save(payload, path)
    return path


def load_model_file(path: str | Path) -> dict:
    """Read and check a file written by :func:`save_model_file`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Model file not found: {path}.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"Cannot read {path} as an element-pose model file: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("kind") != MODEL_KIND:
        raise ValueError(f"{path} is not an element-pose model file (no {MODEL_KIND!r} marker); "
                         "train one with element_pose.engine.train.train().")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{path} has model-file format {version!r}; this element-pose reads up "
                         f"to {FORMAT_VERSION}. Upgrade element-pose.")
    return payload


def checkpoint_dir(workdir: Path) -> Path:
    """Folder of the resumable checkpoints inside a training work directory."""
    return Path(workdir) / "checkpoints"


def list_checkpoints(workdir: Path) -> list[tuple[int, Path]]:
    """(iteration, path) of the resumable checkpoints, oldest first."""
    folder = checkpoint_dir(workdir)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _CKPT.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(workdir: Path, iteration: int, state: dict, keep: int) -> Path:
    """Write ``checkpoints/checkpoint_<iteration>.pt`` and prune all but the newest ``keep``."""
    folder = checkpoint_dir(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"checkpoint_{iteration:08d}.pt"
    atomic_save(state, path)
    for _, old in list_checkpoints(workdir)[:-keep]:
        old.unlink(missing_ok=True)
    return path
