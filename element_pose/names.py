"""Names checked before they reach the database, the same on PostgreSQL and MySQL.

PostgreSQL compares text byte for byte; MySQL and MariaDB compare with their default
collations, which ignore case, accents and trailing spaces. Two body parts ``Snout`` and
``snout`` are two rows on one and a duplicate key on the other. So names are checked here,
with MySQL's notion of "equal", and an error names the value (or the pair) and the fix.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from typing import Any


def fold(value: str) -> str:
    """The form two names share when MySQL's default collations consider them equal."""
    decomposed = unicodedata.normalize("NFKD", value)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold().rstrip(" ")


def check_name(value: Any, what: str, max_len: int = 64) -> str:
    """A non-empty string of at most ``max_len`` characters that every backend stores as is.

    Raises
    ------
    TypeError
        Not a string.
    ValueError
        Empty, too long, with control characters or with leading/trailing spaces.
    """
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, got {value!r} ({type(value).__name__}).")
    if not value:
        raise ValueError(f"{what} is empty; give it a name.")
    if len(value) > max_len:
        raise ValueError(f"{what} {value[:80]!r}... has {len(value)} characters; at most "
                         f"{max_len} fit in the database. Shorten it.")
    bad = [c for c in value if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn")]
    if bad:
        raise ValueError(f"{what} {value!r} holds control or unassigned characters "
                         f"({', '.join(repr(c) for c in bad[:3])}); remove them.")
    if value != value.strip():
        raise ValueError(f"{what} {value!r} starts or ends with spaces, which MySQL ignores when "
                         "comparing names; remove them.")
    return value


def check_names(values: Iterable[Any], what: str, max_len: int = 64) -> list[str]:
    """Check each name and that no two differ only in case, accents or trailing spaces."""
    values = [check_name(v, what, max_len) for v in values]
    seen: dict[str, str] = {}
    for value in values:
        other = seen.setdefault(fold(value), value)
        if other != value:
            raise ValueError(
                f"{what}s {other!r} and {value!r} differ only in case, accents or spaces; MySQL "
                "would treat them as the same name. Rename one of them.")
    return values
