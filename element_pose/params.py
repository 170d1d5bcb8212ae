"""Parameter sets stored as JSON: validated frozen dataclasses built from plain dicts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any


class DictParams:
    """``from_dict`` / ``to_dict`` for a frozen dataclass of parameters.

    Subclasses set ``_what`` (e.g. ``"filter"``) for the error messages and validate their
    values in ``__post_init__``.
    """

    _what = "parameter"

    @classmethod
    def from_dict(cls, params: Mapping[str, Any] | None):
        """Build from a dict (e.g. a ``json`` column), rejecting unknown keys; missing keys take
        their defaults."""
        if params is None:
            return cls()
        if isinstance(params, cls):
            return params
        if not isinstance(params, Mapping):
            raise ValueError(f"{cls._what.capitalize()} parameters must be a dict, got "
                             f"{type(params).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"Unknown {cls._what} parameter(s) {unknown}; allowed keys are {sorted(known)}.")
        return cls(**params)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of all parameters (defaults included)."""
        return asdict(self)
