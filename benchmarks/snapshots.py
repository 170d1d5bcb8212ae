"""Score every training snapshot on the held-back validation frames and on the test frames.

Evidence for the snapshot and stopping rules (``engine/train.py``: ``KEEP_TOLERANCE``,
``EARLY_STOP_FROM``; ``engine/autoconfig.py``: automatic patience). Trains the engine on a
DeepLabCut-layout project's ``split.json`` train frames with the given config (default ``{}``,
everything automatic; early stopping off so the whole schedule is seen), keeps a checkpoint
every ``--every`` iterations, then prints one JSON line per snapshot: validation mean and capped
mean error, test mean and median error. Random initialisation.

Usage::

    python benchmarks/snapshots.py --dataset ../shared/data/openfield-Pranav-2018-10-30
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine import read_dlc_labels, read_image  # noqa: E402

from element_pose.engine.checkpoint import list_checkpoints  # noqa: E402
from element_pose.engine.config import EngineConfig  # noqa: E402
from element_pose.engine.metrics import capped_mean_error, evaluate, validation_cap  # noqa: E402
from element_pose.engine.network import build_network  # noqa: E402
from element_pose.engine.predict import PoseModel  # noqa: E402
from element_pose.engine.train import train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True, type=Path, help="DLC project with split.json")
    ap.add_argument("--config", type=json.loads, default={}, help="engine config (JSON)")
    ap.add_argument("--every", type=int, default=150, help="iterations between snapshots")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()

    names, parts, kp = read_dlc_labels(args.dataset)
    index = {n: i for i, n in enumerate(names)}
    split = json.loads((args.dataset / "split.json").read_text())
    train_idx = [index[n] for n in split["train"]]
    test_idx = [index[n] for n in split["test"]]
    images = [read_image(args.dataset, n) for n in names]
    config = EngineConfig.from_dict({"patience": 10**6, **args.config,
                                     "checkpoint_every": args.every, "keep_checkpoints": 10**6})
    work = args.work or Path(tempfile.mkdtemp(prefix="element_pose_snapshots_"))
    result = train([images[i] for i in train_idx], kp[train_idx], parts, config, work,
                   progress=False)
    resolved = EngineConfig.from_dict(result.config)
    val = result.auto_report["validation_frames"]
    val_images = [images[train_idx[i]] for i in val]
    val_truth = kp[train_idx][val]
    cap = validation_cap(kp[train_idx])
    for iteration, path in list_checkpoints(work):
        net = build_network(resolved, len(parts))
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"])
        model = PoseModel(net.eval(), resolved, parts, device="cpu")
        on_val = model.predict_frames(val_images)
        on_test = evaluate(model.predict_frames([images[i] for i in test_idx]), kp[test_idx])
        print(json.dumps({
            "iteration": iteration,
            "val_mean_px": evaluate(on_val, val_truth)["mean_error_px"],
            "val_capped_px": capped_mean_error(on_val, val_truth, cap),
            "test_mean_px": on_test["mean_error_px"],
            "test_median_px": on_test["median_error_px"]}), flush=True)
    print(json.dumps({"kept_iteration": result.best_iteration, "iterations": result.iterations,
                      "validation_cap_px": cap, "config": result.config}))


if __name__ == "__main__":
    main()
