"""How fast the web page answers on a lab-sized database: 100 recordings of one hour each.

Fills a fresh database (embedded unless DataJoint's settings name a server) with one subject,
ten sessions of ten recordings, each with RecordingInfo and a pose estimation of one hour at
30 frames/s (108,000 frames, 4 body parts: x, y, likelihood arrays in the object store),
written as rows directly (an external model's output; no video decoding). Then times each
page with FastAPI's test client (the median of 5 requests, after one warm-up). Writes
``web_pages.json`` to ``--out``.

Usage::

    python benchmarks/web_pages.py --home /tmp/web/home --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FRAMES = 30 * 3600
PARTS = ["snout", "leftear", "rightear", "tailbase"]


def fill(pl) -> dict:
    model = pl.model
    rng = np.random.default_rng(0)
    model.Model.from_external("bench_dlc", "DeepLabCut", PARTS, scorer="DLC_bench")
    pl.Subject.insert1({"subject": "bench_mouse"}, skip_duplicates=True)
    pl.Device.insert1({"device": "bench_cam"}, skip_duplicates=True)
    times = np.arange(FRAMES) / 30.0
    for s in range(10):
        session = {"subject": "bench_mouse", "session_id": s}
        pl.Session.insert1({**session, "session_datetime": f"2026-11-{s + 1:02d} 09:00:00"},
                           skip_duplicates=True)
        for r in range(10):
            key = {**session, "recording_id": r}
            if model.PoseEstimation & key:
                continue
            model.VideoRecording.insert1({**key, "device": "bench_cam"})
            model.VideoRecording.File.insert1({**key, "file_id": 0, "file_path": f"bench/{s}_{r}.mp4"})
            model.RecordingInfo.insert1({**key, "px_width": 640, "px_height": 480, "frame_count": FRAMES,
                                         "fps": 30.0, "duration": FRAMES / 30, "timestamps": times,
                                         "codec": "h264", "file_frame_counts": [FRAMES]},
                                        allow_direct_insert=True)
            task = {**key, "model_name": "bench_dlc"}
            model.PoseEstimationTask.insert1({**task, "task_mode": "load", "output_path": "bench.h5",
                                              "inference_params": {}})
            model.PoseEstimation.insert1({**task, "pose_frame_count": FRAMES, "analysis_seconds": 0,
                                          "analysis_device": "file"}, allow_direct_insert=True)
            walk = np.cumsum(rng.normal(0, 1, (FRAMES, 2)), axis=0) + 300
            model.PoseEstimation.BodyPartPosition.insert(
                [{**task, "body_part": p, "x": walk[:, 0] + k, "y": walk[:, 1],
                  "likelihood": rng.uniform(0.3, 1.0, FRAMES)} for k, p in enumerate(PARTS)],
                allow_direct_insert=True)
    return {"subject": "bench_mouse", "session_id": 0, "recording_id": 0, "model_name": "bench_dlc"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", required=True)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    os.environ["ELEMENT_POSE_HOME"] = args.home
    sys.path.insert(0, str(REPO))
    from fastapi.testclient import TestClient

    import workflow.pipeline as pl
    from element_pose.web.app import create_app

    started = time.perf_counter()
    pose = fill(pl)
    fill_minutes = (time.perf_counter() - started) / 60
    client = TestClient(create_app())
    session = {k: pose[k] for k in ("subject", "session_id")}
    recording = {**session, "recording_id": 0}
    pages = {
        "home": "/", "subjects": "/subjects", "subject (10 sessions)": "/subject?subject=bench_mouse",
        "session (10 recordings)": "/session?" + urlencode(session),
        "recording": "/recording?" + urlencode(recording),
        "pose result (1 h, 4 parts)": "/pose?" + urlencode(pose),
        "trajectory plot, whole hour": "/plot/trajectory.png?" + urlencode(pose),
        "trajectory plot, 10 min": "/plot/trajectory.png?" + urlencode({**pose, "start": 0, "stop": 18000}),
        "likelihood plot, whole hour": "/plot/likelihood.png?" + urlencode(pose),
        "models": "/models", "jobs": "/jobs",
    }
    timings = {}
    for name, path in pages.items():
        assert client.get(path).status_code == 200, path
        seconds = []
        for _ in range(5):
            t0 = time.perf_counter()
            response = client.get(path)
            seconds.append(time.perf_counter() - t0)
            assert response.status_code == 200
        timings[name] = float(np.median(seconds))
        print(f"{name:32s} {timings[name] * 1000:7.0f} ms")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"machine": f"{platform.node()}, {os.cpu_count()} CPUs", "recordings": 100,
              "frames_per_recording": FRAMES, "body_parts": len(PARTS), "fill_minutes": fill_minutes,
              "median_seconds": timings}
    (out / "web_pages.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
