"""``element-pose worker``: several workers share the work through DataJoint's job reservation;
one killed by SIGKILL leaves its task to another, SIGTERM leaves no reserved job."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_video

from element_pose.sample import make_sample
from element_pose.worker import TABLE_ORDER, element_tables, run_worker

pytestmark = pytest.mark.db

TINY = {"backbone": "resnet18", "backbone_stride": 8, "head_channels": 32, "input_scale": 1.0,
        "crop_size": 64, "batch_size": 4, "sigma": 2.5, "locref_radius": 5.0,
        "validation_fraction": 0.0, "device": "cpu", "iterations": 20, "num_threads": 1}


@pytest.fixture(scope="module")
def tiny_model(pipeline):
    train, model = pipeline.train, pipeline.model
    root = pipeline.get_pose_root_data_dir()[0]
    sample = make_sample(f"{root}/worker", n_frames=12, n_labeled=12, width=64, height=48, seed=5)
    dataset = train.LabeledDataset.import_dlc(sample.project_dir, "worker")
    split = train.DataSplit.random(dataset, test_fraction=0.25, seed=0)
    params = train.TrainingParamSet.insert_new_params(TINY)
    task = {**split, **params, "run_id": 0}
    train.TrainingTask.insert1(task, skip_duplicates=True)
    train.ModelTraining.populate(task)
    return model.Model.from_training(task, "worker_model")


def _recordings(pipeline, subject: str, count: int, frames: int, start: int = 0) -> list[dict]:
    model = pipeline.model
    root = pipeline.get_pose_root_data_dir()[0]
    pipeline.Subject.insert1({"subject": subject}, skip_duplicates=True)
    session = {"subject": subject, "session_id": 1}
    pipeline.Session.insert1({**session, "session_datetime": "2026-11-30 09:00:00"}, skip_duplicates=True)
    pipeline.Device.insert1({"device": "worker_cam"}, skip_duplicates=True)
    keys = []
    for i in range(start, start + count):
        video = write_video(Path(root) / subject / f"v{i}.mp4", frames)
        keys.append(model.VideoRecording.add(session, i, {"device": "worker_cam"}, [video]))
    return keys


def _worker(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "element_pose.cli", "worker", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _jobs(table, status: str, keys: list[dict]) -> list[dict]:
    return (table.jobs & keys & {"status": status}).to_dicts()


def test_three_workers_make_twelve_pose_tasks_exactly_once(pipeline, tiny_model):
    model = pipeline.model
    keys = _recordings(pipeline, "workers3", 12, frames=30)
    # the workers also measure the recordings (RecordingInfo comes first in their order)
    workers = [_worker("--tables", "RecordingInfo", "PoseEstimation", "--poll", "1",
                       "--max-seconds", "240", "--restrict", '{"subject": "workers3"}')
               for _ in range(3)]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(model.RecordingInfo & keys) < 12:
        time.sleep(0.5)
    for key in keys:
        model.PoseEstimationTask.add(key, tiny_model)
    while time.monotonic() < deadline and len(model.PoseEstimation & keys) < 12:
        time.sleep(0.5)
    for w in workers:
        w.send_signal(signal.SIGTERM)
    outputs = [w.communicate(timeout=120) for w in workers]
    assert len(model.PoseEstimation & keys) == 12
    logs = "\n".join(err[-1500:] for _, err in outputs)
    # every key made once: the logs of the three add up to twelve, none failed
    made = [len(re.findall(r"PoseEstimation: made 1 key", err)) for _, err in outputs]
    assert sum(made) == 12, logs
    assert sum(m > 0 for m in made) >= 2, made      # the work was shared
    assert not _jobs(model.PoseEstimation, "reserved", keys)
    assert not _jobs(model.PoseEstimation, "error", keys)


def test_killed_worker_task_is_finished_by_another_and_sigterm_leaves_nothing_reserved(
        pipeline, tiny_model):
    import json

    model = pipeline.model
    keys = _recordings(pipeline, "workerkill", 2, frames=1500, start=100)
    model.RecordingInfo.populate(keys)
    killed, stopped = (model.PoseEstimationTask.add(k, tiny_model, chunk_frames=100) for k in keys)

    def wait_reserved(worker, key) -> None:
        for _ in range(1200):
            if model.PoseEstimation.jobs & key & {"status": "reserved"}:
                time.sleep(1.0)   # inside make()
                return
            assert worker.poll() is None, worker.communicate()
            time.sleep(0.1)
        raise AssertionError("the worker never reserved its job")

    only = ("--tables", "PoseEstimation", "--restrict")
    # SIGKILL mid-task: the reservation stays; the next worker recovers and finishes it
    first = _worker(*only, json.dumps({"recording_id": killed["recording_id"]}))
    wait_reserved(first, killed)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    assert model.PoseEstimation.jobs & killed & {"status": "reserved"}
    assert not model.PoseEstimation & killed
    second = _worker(*only, json.dumps({"recording_id": killed["recording_id"]}))
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-2000:]
    assert model.PoseEstimation & killed and "made PoseEstimation 1" in out

    # SIGTERM mid-task: status 143, the key pending again, nothing reserved, no row
    third = _worker(*only, json.dumps({"recording_id": stopped["recording_id"]}))
    wait_reserved(third, stopped)
    third.send_signal(signal.SIGTERM)
    out, err = third.communicate(timeout=120)
    assert third.returncode == 143, err[-2000:]
    assert not _jobs(model.PoseEstimation, "reserved", keys)
    assert not model.PoseEstimation & stopped

    # and a worker in this process finishes it
    report = run_worker(element_tables(pipeline, ["PoseEstimation"]), restriction=stopped)
    assert report.made == {"PoseEstimation": 1} and report.stopped_by == "no work left"
    assert model.PoseEstimation & stopped


def test_worker_limits_and_table_names(pipeline):
    with pytest.raises(ValueError, match="Unknown tables"):
        element_tables(pipeline, ["PoseEstimatoin"])
    tables = element_tables(pipeline)
    assert [t.__class__.__name__ for t in tables] == [name for _, name in TABLE_ORDER]
    report = run_worker(tables, max_jobs=0)
    assert report.stopped_by == "job limit (0)" and report.total_made == 0


REPO = Path(__file__).resolve().parents[1]


def test_cluster_examples_run_the_worker(pipeline, tiny_model, pose_home):
    """The SLURM script runs as a worker (against this test's server when it is one); the
    Kubernetes Job and the compose service start workers the same way."""
    import json

    import yaml

    script = REPO / "deploy" / "slurm" / "element-pose-worker.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    job = yaml.safe_load((REPO / "deploy" / "kubernetes" / "element-pose-workers.yaml").read_text())
    assert job["kind"] == "Job" and job["spec"]["parallelism"] >= 2
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["element-pose", "worker"]
    assert {e["name"] for e in container["env"]} >= {"DJ_HOST", "DJ_USER", "DJ_PASS", "DJ_STORES"}
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    worker = compose["services"]["worker"]
    assert "element-pose worker" in worker["command"][-1]
    assert worker["depends_on"]["mysql"]["condition"] == "service_healthy"

    if not os.environ.get("DJ_HOST"):
        pytest.skip("the SLURM script targets a lab server; run with DJ_HOST set (CI does)")
    model = pipeline.model
    key = _recordings(pipeline, "slurm", 1, frames=20, start=200)[0]
    model.RecordingInfo.populate(key)
    model.PoseEstimationTask.add(key, tiny_model)
    env = {**os.environ, "ELEMENT_POSE_VENV": sys.prefix, "SLURM_ARRAY_TASK_ID": "0",
           "DJ_STORES": json.dumps({"main": {"protocol": "file", "location": str(pose_home / "store")}})}
    run = subprocess.run(["bash", str(script), "--tables", "PoseEstimation", "--restrict",
                          json.dumps({"subject": "slurm"})], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert re.search(r"made .*PoseEstimation 1", run.stdout) and model.PoseEstimation & key
