"""element-pose: a DataJoint Element for markerless pose estimation."""

import importlib
import warnings

__version__ = "0.1.0"

# The embedded database needs no datajoint.json; DataJoint's warning about it is noise here.
warnings.filterwarnings("ignore", message="No datajoint.json found")
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")


def __getattr__(name: str):
    # ``element_pose.db`` on first use, so the engine (``element_pose.engine``) imports
    # without DataJoint, e.g. on a GPU machine that runs only training and inference.
    if name == "db":
        return importlib.import_module(".db", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def activate(prefix: str | None = None, *, linking_module=None, create_schema: bool = True,
             create_tables: bool = True) -> None:
    """Activate the Element's schemas (``<prefix>train``, ``<prefix>model``, ``<prefix>refine``,
    ``<prefix>multiview``).

    Parameters
    ----------
    prefix : str, optional
        Schema-name prefix; default ``$ELEMENT_POSE_PREFIX`` or ``pose_``.
    linking_module : module or str
        Provides ``Session``, ``Device`` and ``get_pose_root_data_dir()``.
    """
    from . import db, model, multiview, refine

    db.connect()  # the configured server or the embedded database, and the object store
    prefix = db.schema_prefix() if prefix is None else prefix
    model.activate(f"{prefix}model", train_schema_name=f"{prefix}train", linking_module=linking_module,
                   create_schema=create_schema, create_tables=create_tables)
    refine.activate(f"{prefix}refine", create_schema=create_schema, create_tables=create_tables,
                    linking_module=linking_module)
    multiview.activate(f"{prefix}multiview", create_schema=create_schema,
                       create_tables=create_tables, linking_module=linking_module)
