"""Database and object-store connection: an embedded PostgreSQL by default, a lab server when
DataJoint's own settings say so.

Nothing here runs at import time; :func:`connect` is called by ``activate`` and the CLI.

Precedence
----------
1. A lab server when ``DJ_HOST`` is set in the environment or a ``datajoint.json`` was found
   (DataJoint's own configuration: ``DJ_USER``, ``DJ_PASS``, ``DJ_BACKEND``, ``DJ_PORT``,
   ``DJ_STORES``).
2. Otherwise a private PostgreSQL started with ``pgserver`` in ``$ELEMENT_POSE_HOME/pgdata``
   (default: the per-user data directory), reused when already running.

The object store ``main`` (images, weights, arrays) defaults to ``$ELEMENT_POSE_HOME/store``
unless DataJoint's settings define a store of that name.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import datajoint as dj
import platformdirs

logger = logging.getLogger(__name__)

STORE = "main"
_embedded_server = None  # keeps pgserver's handle alive for the life of the process


@dataclass(frozen=True)
class ConnectionInfo:
    """What :func:`connect` connected to (never the password)."""

    kind: str  # "embedded" or "server"
    backend: str
    host: str
    port: int
    user: str
    store: str
    store_location: str
    schema_prefix: str

    def describe(self) -> str:
        """Human-readable summary for ``element-pose db``."""
        return (
            f"database: {self.kind} {self.backend} at {self.host}:{self.port} as {self.user}\n"
            f"schemas:  {self.schema_prefix}*\n"
            f"store:    '{self.store}' -> {self.store_location}"
        )


def home() -> Path:
    """Directory of the embedded database and the default object store.

    ``$ELEMENT_POSE_HOME`` when set, else the per-user data directory
    (e.g. ``~/.local/share/element-pose``).
    """
    env = os.environ.get("ELEMENT_POSE_HOME")
    path = Path(env).expanduser() if env else Path(platformdirs.user_data_dir("element-pose"))
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def schema_prefix() -> str:
    """Prefix of the Element's schema names (``$ELEMENT_POSE_PREFIX``, default ``pose_``)."""
    return os.environ.get("ELEMENT_POSE_PREFIX", "pose_")


def server_configured() -> bool:
    """True when DataJoint's settings point at a lab server rather than the embedded one."""
    return bool(os.environ.get("DJ_HOST")) or dj.config._config_path is not None


def _start_embedded() -> tuple[str, int]:
    """Start (or reuse) the private PostgreSQL; return its socket directory and port."""
    global _embedded_server
    import pgserver

    pgdata = home() / "pgdata"
    pgdata.mkdir(parents=True, exist_ok=True)
    if _embedded_server is None:
        _check_not_a_copy(pgdata)
        # By default the server keeps running after exit, so the next process reuses it at once;
        # ELEMENT_POSE_KEEP_SERVER=0 stops it when the last process using it exits.
        keep = os.environ.get("ELEMENT_POSE_KEEP_SERVER", "1") != "0"
        _embedded_server = pgserver.get_server(pgdata, cleanup_mode=None if keep else "stop")
    info = _embedded_server.get_postmaster_info()
    host = str(info.socket_dir) if info.socket_dir else "127.0.0.1"
    return host, int(info.port or 5432)


class CopiedHomeError(RuntimeError):
    """An ELEMENT_POSE_HOME copied while the server of the original was running."""


def _check_not_a_copy(pgdata: Path) -> None:
    """Refuse a home whose ``postmaster.pid`` belongs to another home's running server.

    PostgreSQL writes its data directory into ``postmaster.pid``. A home copied (or moved)
    while its server ran carries that file: connecting through it would reach the *original*
    database while this home's object store is used, mixing two labs' rows and files. A stale
    file of a server that is gone is removed, so this home's own server starts.
    """
    pid_file = pgdata / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
    except OSError:
        return
    if len(lines) < 2 or Path(lines[1]).resolve() == pgdata.resolve():
        return
    try:
        pid = int(lines[0])
        os.kill(pid, 0)
        alive = True
    except (ValueError, ProcessLookupError):
        alive = False
    except PermissionError:
        alive = True
    if alive:
        raise CopiedHomeError(
            f"{pgdata.parent} is a copy of the element-pose home {Path(lines[1]).parent}, made "
            f"while its database server (pid {lines[0]}) was running: this home would talk to "
            "that database with its own object store. Stop the original server first "
            f"(ELEMENT_POSE_HOME={Path(lines[1]).parent} python -c 'from element_pose import "
            "db; db.connect(); db.stop_embedded_on_exit()'), then copy again, or give this "
            "copy a fresh home.")
    logger.warning("Removing %s: it belongs to a server of %s that is no longer running.",
                   pid_file, lines[1])
    pid_file.unlink(missing_ok=True)


def _configure_store() -> str:
    stores = dict(dj.config.stores)
    if STORE not in stores:
        if server_configured():
            logger.warning(
                "No object store '%s' is configured for the lab server; using %s on this machine. "
                "Other machines will not find its files: set DJ_STORES or stores.%s in "
                "datajoint.json to a shared folder or bucket.", STORE, home() / "store", STORE)
        location = home() / "store"
        location.mkdir(parents=True, exist_ok=True)
        stores[STORE] = {"protocol": "file", "location": str(location)}
    stores.setdefault("default", STORE)
    dj.config.stores = stores
    spec = stores[STORE]
    return str(spec.get("location", spec))


def connect(reset: bool = False) -> ConnectionInfo:
    """Configure DataJoint for the embedded database or the configured server and connect.

    Parameters
    ----------
    reset : bool
        Open a new connection even when one exists.

    Returns
    -------
    ConnectionInfo
        Where the data go.
    """
    if server_configured():
        kind = "server"
    else:
        kind = "embedded"
        host, port = _start_embedded()
        dj.config.database.backend = "postgresql"
        dj.config.database.host = host
        dj.config.database.port = port
        dj.config.database.user = "postgres"
        dj.config.database.password = ""  # trust auth on a private socket
    location = _configure_store()
    dj.conn(reset=reset)
    db = dj.config.database
    return ConnectionInfo(
        kind=kind,
        backend=db.backend,
        host=db.host,
        port=int(db.port),
        user=db.user or "",
        store=STORE,
        store_location=location,
        schema_prefix=schema_prefix(),
    )


def stop_embedded_on_exit() -> None:
    """Stop the embedded server when this process exits (tests, throw-away homes).

    By default the server keeps running after exit so the next process starts instantly.
    """
    if _embedded_server is not None:
        _embedded_server.cleanup_mode = "stop"
