"""Nothing is left in the object store by failed inserts; `element-pose gc` finds older orphans."""

from __future__ import annotations

import numpy as np
import pytest

from element_pose.cli import main
from element_pose.sample import make_sample
from element_pose.storage import collect_garbage, remove_uncommitted


def _store_files(pipeline) -> set[str]:
    import datajoint as dj

    collector = dj.gc.GarbageCollector(pipeline.train.schema, store="main")
    return set(collector.list_schema_paths(pipeline.train.schema.database))


def _rolled_back_frames(train, name: str, image: bytes) -> None:
    """Insert a dataset with two frames inside a transaction that then fails."""
    with pytest.raises(RuntimeError, match="interrupted"):
        with train.LabeledDataset.connection.transaction:
            train.LabeledDataset.insert1({
                "dataset": name, "source_format": "generated", "source_path": "", "scorer": "",
                "labeled_frame_count": 2, "bodyparts_sha256": "0" * 64, "content_sha256": "0" * 64,
                "skeleton": [], "dataset_description": ""})
            train.LabeledDataset.Frame.insert(
                {"dataset": name, "frame_id": i, "frame_name": f"f{i}.png", "image": (".png", image),
                 "image_sha256": "0" * 64, "width": 1, "height": 1} for i in range(2))
            raise RuntimeError("interrupted")


@pytest.mark.db
def test_failed_insert_leaves_no_files_and_gc_finds_orphans(pipeline, tmp_path, capsys):
    train = pipeline.train
    sample = make_sample(tmp_path / "p", n_frames=6, n_labeled=3, width=48, height=40, seed=4)
    live = train.LabeledDataset.import_dlc(sample.project_dir, "storage_live")
    image = (train.LabeledDataset.Frame & live & {"frame_id": 0}).fetch1("image").read()
    before = _store_files(pipeline)

    # a rolled-back insert leaves its files ...
    _rolled_back_frames(train, "storage_failed", image)
    orphans = _store_files(pipeline) - before
    assert len(orphans) == 2 and all("dataset=storage_failed" in p for p in orphans)
    # ... which remove_uncommitted deletes, and only those
    assert remove_uncommitted(train.LabeledDataset.Frame, {"dataset": "storage_failed"}) == 2
    assert _store_files(pipeline) == before
    # a live dataset's files are never removed
    assert remove_uncommitted(train.LabeledDataset.Frame, live) == 0

    # orphans of a process that died (no cleanup ran): found by gc, removed with --delete
    _rolled_back_frames(train, "storage_killed", image)
    stats = collect_garbage([train.schema], delete=False)
    assert stats["schema_paths_orphaned"] == 2
    assert main(["gc"]) == 0
    assert "2 orphaned object-store files" in capsys.readouterr().out
    assert len(_store_files(pipeline) - before) == 2  # a dry run deletes nothing
    assert main(["gc", "--delete"]) == 0
    assert "deleted" in capsys.readouterr().out
    assert _store_files(pipeline) == before
    images = train.LabeledDataset.images(live, [0, 1, 2])  # live data intact, hashes verified
    assert all(im.shape == (40, 48, 3) and im.dtype == np.uint8 for im in images)


@pytest.mark.db
def test_import_failing_inside_its_transaction_removes_its_images(pipeline, tmp_path):
    """The images of an import are written before its rows commit: a failure after that point
    (here a frame index beyond the column's int32, refused by the database itself) must not
    leave them behind."""
    train = pipeline.train
    from element_pose.io.dlc import read_dlc_project

    sample = make_sample(tmp_path / "q", n_frames=6, n_labeled=3, width=48, height=40, seed=5)
    data = read_dlc_project(sample.project_dir)
    data.frames[1].frame_index = 2**40
    before = _store_files(pipeline)
    with pytest.raises(Exception):  # noqa: B017 - the database's own error type differs by backend
        train.LabeledDataset.import_labels(data, "storage_long_name")
    assert not train.LabeledDataset & {"dataset": "storage_long_name"}
    assert _store_files(pipeline) == before
