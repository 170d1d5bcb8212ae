"""Pose-estimation tasks per minute with 1 and with 2 ``element-pose worker`` processes.

On the embedded database (or the server DataJoint's settings name): a small model trained on
a generated sample, then two sets of 12 recordings (generated videos) analysed by
``element-pose worker --tables PoseEstimation``: the first set by one worker using every core,
the second by two workers started together, each with half the cores (torch threads). Writes
``workers.json`` to ``--out``.

Usage::

    python benchmarks/workers.py --home /tmp/workers/home --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CONFIG = {"backbone": "resnet18", "backbone_stride": 8, "head_channels": 32, "input_scale": 1.0,
          "crop_size": 96, "batch_size": 8, "validation_fraction": 0.0, "iterations": 100}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", required=True)
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--tasks", type=int, default=12)
    parser.add_argument("--frames", type=int, default=600)
    args = parser.parse_args()
    os.environ["ELEMENT_POSE_HOME"] = args.home
    os.environ.pop("ELEMENT_POSE_ROOT_DATA_DIR", None)
    sys.path.insert(0, str(REPO))
    from element_pose.sample import make_sample
    from workflow.pipeline import Device, Session, Subject, get_pose_root_data_dir, model, train

    root = Path(get_pose_root_data_dir()[0])
    sample = make_sample(root / "bench_sample", n_frames=args.frames, n_labeled=40, width=160,
                         height=120, seed=0)
    dataset = train.LabeledDataset.import_dlc(sample.project_dir, "workers_bench")
    split = train.DataSplit.random(dataset, test_fraction=0.2, seed=0)
    task = {**split, **train.TrainingParamSet.insert_new_params(CONFIG), "run_id": 0}
    train.TrainingTask.insert1(task, skip_duplicates=True)
    train.ModelTraining.populate(task)
    model_key = model.Model.from_training(task, "workers_bench")
    Device.insert1({"device": "bench_cam"}, skip_duplicates=True)

    def make_tasks(subject: str) -> None:
        Subject.insert1({"subject": subject}, skip_duplicates=True)
        session = {"subject": subject, "session_id": 1}
        Session.insert1({**session, "session_datetime": "2026-12-01 09:00:00"}, skip_duplicates=True)
        for i in range(args.tasks):
            rec = model.VideoRecording.add(session, i, {"device": "bench_cam"}, [sample.video_path])
            model.RecordingInfo.populate(rec)
            model.PoseEstimationTask.add(rec, model_key)

    cores = os.cpu_count() or 1
    results = {"machine": f"{platform.node()}, {cores} CPUs", "tasks": args.tasks,
               "frames_per_task": args.frames, "frame_size": "160x120", "runs": {}}
    for n_workers, subject in ((1, "bench_one"), (2, "bench_two")):
        make_tasks(subject)
        threads = max(1, cores // n_workers)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
        started = time.perf_counter()
        workers = [subprocess.Popen([sys.executable, "-m", "element_pose.cli", "worker", "--tables",
                                     "PoseEstimation", "--restrict", json.dumps({"subject": subject})],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                   for _ in range(n_workers)]
        outputs = [w.communicate()[0] for w in workers]
        seconds = time.perf_counter() - started
        done = len(model.PoseEstimation & {"subject": subject})
        results["runs"][f"{n_workers}_workers"] = {
            "torch_threads_each": threads, "seconds": seconds, "tasks_done": done,
            "tasks_per_minute": 60 * done / seconds, "worker_output": [o.strip() for o in outputs]}
        print(n_workers, "worker(s):", f"{60 * done / seconds:.2f} tasks/min", outputs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "workers.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
