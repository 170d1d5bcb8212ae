"""Jobs that survive crashes: a worker killed by SIGKILL or stopped by SIGTERM leaves work that
the next populate(reserve_jobs=True) does; failures are listed and retried by `element-pose jobs`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import add_recording

from element_pose.cli import main
from element_pose.sample import make_sample

pytestmark = pytest.mark.db

SLOW = {"backbone": "resnet18", "backbone_stride": 8, "head_channels": 32, "input_scale": 1.0,
        "crop_size": 64, "batch_size": 4, "sigma": 2.5, "locref_radius": 5.0,
        "validation_fraction": 0.0, "device": "cpu", "checkpoint_every": 20, "num_threads": 1}


@pytest.fixture(scope="module")
def split(pipeline, tmp_path_factory):
    train = pipeline.train
    root = pipeline.get_pose_root_data_dir()[0]
    sample = make_sample(f"{root}/jobs", n_frames=12, n_labeled=12, width=64, height=48, seed=7)
    dataset = train.LabeledDataset.import_dlc(sample.project_dir, "jobs")
    return train.DataSplit.random(dataset, test_fraction=0.25, seed=0)


def _task(pipeline, split, iterations: int) -> dict:
    train = pipeline.train
    params = train.TrainingParamSet.insert_new_params({**SLOW, "iterations": iterations})
    task = {**split, **params, "run_id": 0}
    train.TrainingTask.insert1(task, skip_duplicates=True)
    return task


def _worker(task: dict) -> subprocess.Popen:
    script = ("from workflow.pipeline import train\n"
              f"train.ModelTraining.populate({task!r}, reserve_jobs=True)\n")
    return subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _status(pipeline, task: dict) -> str | None:
    rows = (pipeline.train.ModelTraining.jobs & task).to_dicts()
    return rows[0]["status"] if rows else None


def _wait_reserved(pipeline, task: dict, worker: subprocess.Popen) -> None:
    for _ in range(600):
        if _status(pipeline, task) == "reserved":
            time.sleep(3)  # well inside make(): training has started
            return
        assert worker.poll() is None, worker.communicate()
        time.sleep(0.2)
    raise AssertionError("the worker never reserved its job")


def test_sigkill_worker_job_is_done_by_the_next_populate(pipeline, split):
    train = pipeline.train
    task = _task(pipeline, split, iterations=600)
    worker = _worker(task)
    _wait_reserved(pipeline, task, worker)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=60)
    assert _status(pipeline, task) == "reserved"  # what DataJoint leaves behind
    # DataJoint alone would skip the key; the Element's populate recovers it
    result = train.ModelTraining.populate(task, reserve_jobs=True)
    assert result["success_count"] == 1
    assert len(train.ModelTraining & task) == 1
    assert _status(pipeline, task) in (None, "success")  # DataJoint drops finished jobs


def test_sigterm_releases_the_reservation(pipeline, split):
    task = _task(pipeline, split, iterations=3000)
    worker = _worker(task)
    _wait_reserved(pipeline, task, worker)
    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=120)
    assert worker.returncode != 0
    assert _status(pipeline, task) == "pending", err[-2000:]
    assert "released" in err
    assert not pipeline.train.ModelTraining & task
    # clean up: this training is not needed by other tests
    (pipeline.train.ModelTraining.jobs & task).delete_quick()
    (pipeline.train.TrainingTask & task).delete_quick()


def test_failed_jobs_are_listed_and_retried(pipeline, split, capsys):
    """A failure stays failed (it is not an interruption) until `element-pose jobs --retry`."""
    train = pipeline.train
    # multi-animal settings for a one-animal dataset: refused inside the job
    params = train.TrainingParamSet.insert_new_params({**SLOW, "iterations": 5,
                                                       "multianimal": {}})
    task = {**split, **params, "run_id": 0}
    train.TrainingTask.insert1(task, skip_duplicates=True)
    result = train.ModelTraining.populate(task, reserve_jobs=True, suppress_errors=True)
    assert result["success_count"] == 0 and len(result["error_list"]) == 1
    assert _status(pipeline, task) == "error"
    train.ModelTraining.populate(task, reserve_jobs=True, suppress_errors=True)
    assert _status(pipeline, task) == "error"  # a real error is not retried by itself

    assert main(["jobs"]) == 0
    out = capsys.readouterr().out
    assert "ModelTraining" in out and "failed" in out and "labels one animal" in out
    assert main(["jobs", "--retry"]) == 0
    assert "1 failed job(s) back to pending" in capsys.readouterr().out
    assert _status(pipeline, task) == "pending"
    (train.ModelTraining.jobs & task).delete_quick()
    (train.TrainingTask & task).delete_quick()  # not work for later tests


def test_killed_pose_estimation_resumes_where_it_was(pipeline, split, tmp_path):
    """A long analysis killed by SIGKILL continues from its last saved chunk; the row equals an
    uninterrupted run of the same model on the same video."""
    train, model = pipeline.train, pipeline.model
    task = _task(pipeline, split, iterations=30)
    train.ModelTraining.populate(task)
    model_key = model.Model.from_training(task, "jobs_model")
    root = pipeline.get_pose_root_data_dir()[0]
    long = make_sample(f"{root}/jobs_long", n_frames=900, n_labeled=2, width=64, height=48, seed=9)
    _, recording = add_recording(pipeline, "jobs", "cam_jobs", long.video_path)
    key = model.PoseEstimationTask.add(recording, model_key, batch_size=4, chunk_frames=40)
    resume = model.PoseEstimation._resume_dir(key)

    script = ("import torch; torch.set_num_threads(1)\n"
              "from workflow.pipeline import model\n"
              f"model.PoseEstimation.populate({key!r}, reserve_jobs=True)\n")
    worker = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(1200):
        if len(list(resume.glob("chunk_*.npy"))) >= 3:
            break
        assert worker.poll() is None, worker.communicate()
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=60)
    saved = sorted(resume.glob("chunk_*.npy"))
    assert 3 <= len(saved) and not model.PoseEstimation & key

    result = model.PoseEstimation.populate(key, reserve_jobs=True)
    assert result["success_count"] == 1
    pose, _ = model.PoseEstimation.pose_array(key)
    assert pose.shape[0] == 900
    direct, _ = model.Model.load(model_key).predict_video([long.video_path], batch_size=4,
                                                          progress=False)
    # The worker ran torch on 1 thread and this process on all cores: the convolutions may
    # then round differently in the last bits (seen: 6e-9 in a likelihood), nothing more.
    np.testing.assert_allclose(pose, direct.astype(np.float64), rtol=1e-6, atol=1e-6)
    assert not resume.exists()  # removed once the rows are in
