"""Root-directory path handling, as in other DataJoint Elements: paths are stored relative to
one of the lab's root data directories and resolved with element-interface."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from element_interface.utils import find_root_directory


def _roots(get_roots: Callable[[], Sequence[str] | str] | None) -> list[Path]:
    if get_roots is None:
        return []
    roots = get_roots()
    roots = [roots] if isinstance(roots, (str, Path)) else list(roots or [])
    return [Path(r).expanduser().resolve() for r in roots]


def to_relative(path: str | Path, get_roots: Callable | None) -> str:
    """``path`` relative to the root data directory that holds it, else absolute."""
    path = Path(path).expanduser().resolve()
    roots = _roots(get_roots)
    if roots:
        try:
            root = find_root_directory(roots, path)
            return path.relative_to(Path(root).resolve()).as_posix()
        except (FileNotFoundError, ValueError):
            pass
    return path.as_posix()


def to_full(path: str | Path, get_roots: Callable | None) -> Path:
    """Resolve a stored (relative or absolute) path to an existing file or folder.

    Raises
    ------
    FileNotFoundError
        Naming the path and the root directories searched.
    """
    path = Path(path)
    if path.is_absolute():
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist. Restore it or fix the stored path.")
        return path
    roots = _roots(get_roots)
    # Roots only, in order: element-interface's find_full_path would try the working directory
    # first, where a same-named file could shadow the recording.
    for root in roots:
        if (root / path).exists():
            return (root / path).resolve()
    raise FileNotFoundError(
        f"{path} was not found under any root data directory {[str(r) for r in roots]}. "
        "Restore the file or add its root to get_pose_root_data_dir()."
    )
