"""One accuracy benchmark over every labeled dataset in ../shared/data, the default user path.

For each dataset: import the labels into the database, make the split from its split.json
(``benchmarks/splits/`` for the four sleap-anipose cameras, each treated as a single-animal
dataset), train with the *default* parameter set (``{}``: every data-dependent value
automatic), register the model, evaluate it, and time video analysis. With ``--dlc``,
DeepLabCut 3.0.2 is trained on the same split right after, in the same run, by the harness in
../shared/peers/dlc (its own virtualenv). Writes ``accuracy.json`` and ``accuracy.md`` to
``--out``.

Random initialisation (pretrained weights cannot be downloaded on the benchmark machine).

Usage::

    python benchmarks/accuracy.py                       # every dataset, ours only
    python benchmarks/accuracy.py --datasets openfield mirror-mouse --dlc
    python benchmarks/accuracy.py --dlc --no-ours        # DeepLabCut only (e.g. in parallel)
    python benchmarks/accuracy.py --table                # rebuild accuracy.md from the results
    python benchmarks/accuracy.py --datasets mirror-mouse --home H --rescore   # decoding changed

Each dataset's figures go to ``--out`` as ``ours_<dataset>.json`` / ``dlc_<dataset>.json``;
``accuracy.md`` is rebuilt from every result found there.
"""

from __future__ import annotations

import os

# Before torch loads: OpenMP busy-waiting slows torch 3-7x on a CPU shared with other jobs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared"
DATA = Path(os.environ.get("ELEMENT_POSE_SHARED_DATA", SHARED / "data"))
DLC_HARNESS = SHARED / "peers" / "dlc" / "run_dlc.py"
DLC_PYTHON = Path.home() / ".cache" / "peer-dlc-venv" / "bin" / "python"


def datasets() -> dict[str, dict]:
    """Name -> how to import it, its split and its video."""
    out = {
        "openfield": {"kind": "dlc", "path": DATA / "openfield-Pranav-2018-10-30",
                      "split": DATA / "openfield-Pranav-2018-10-30" / "split.json",
                      "video": DATA / "openfield-Pranav-2018-10-30" / "videos" / "m3v1mp4.mp4"},
        "mirror-mouse": {"kind": "dlc", "path": DATA / "lightning-pose-mirror-mouse",
                         "split": DATA / "lightning-pose-mirror-mouse" / "split.json",
                         "video": DATA / "lightning-pose-mirror-mouse" / "videos" / "test_vid.mp4"},
    }
    session = DATA / "sleap-anipose-minimal-session"
    for cam in ("back", "mid", "side", "top"):
        out[f"anipose-{cam}"] = {
            "kind": "sleap", "path": session / cam / f"minimal_{cam}_proofread.slp",
            "split": HERE / "splits" / f"sleap-anipose-{cam}.json",
            "video": session / cam / f"minimal_{cam}.mp4"}
    return out


def run_ours(name: str, spec: dict, video_frames: int, params: dict | None = None) -> dict:
    """The default user path through the tables (``params``: the parameter set, default
    ``{}``); returns the figures."""
    from workflow.pipeline import model, train

    t0 = time.perf_counter()
    if spec["kind"] == "dlc":
        dataset = train.LabeledDataset.import_dlc(spec["path"], name)
    else:
        dataset = train.LabeledDataset.import_sleap(spec["path"], name, include_predicted=True)
    split = train.DataSplit.from_split_json(dataset, spec["split"])
    paramset = train.TrainingParamSet.insert_new_params(params or {}, description="benchmark")
    task = {**split, **paramset, "run_id": 0}
    train.TrainingTask.insert1(task, skip_duplicates=True)
    import_seconds = time.perf_counter() - t0
    train.ModelTraining.populate(task, display_progress=False)
    run = (train.ModelTraining & task).fetch1()
    model_key = model.Model.from_training(task, f"bench_{name}")
    model.ModelEvaluation.populate({**model_key, **split})
    ev = (model.ModelEvaluation & model_key & split).fetch1()
    parts = (model.ModelEvaluation.BodyPart & model_key & split).to_dicts()
    per_part = {p["body_part"]: p["test_error_px"] for p in parts}
    errors = np.array([v for v in per_part.values() if v is not None])
    fps = None
    if video_frames and spec["video"].is_file():
        net = model.Model.load(model_key)
        _, stats = net.predict_video(spec["video"], stop=video_frames, progress=False)
        fps = stats["fps"]
    chosen = run["auto_report"]["chosen"]
    return {
        "dataset": name,
        "mean_px": ev["test_error_px"], "median_px": ev["test_median_error_px"],
        "rmse_px": ev["test_rmse_px"], "pck5": ev["test_pck5"],
        "pcutoff_px": ev["test_error_pcutoff_px"], "train_mean_px": ev["train_error_px"],
        "fraction_above_pcutoff": ev["test_fraction_above_pcutoff"],
        "error_below_pcutoff_px": ev["test_error_below_pcutoff_px"],
        "absent_below_pcutoff": ev["test_absent_below_pcutoff"],
        "per_bodypart_px": per_part,
        # the rule: no part's mean above 3x the dataset's median (keypoint) error
        "worst_part_over_median": (float(errors.max() / ev["test_median_error_px"])
                                   if errors.size else None),
        "iterations": run["iterations"], "best_iteration": run["best_iteration"],
        "train_minutes": run["train_seconds"] / 60.0,
        "import_seconds": import_seconds,
        "chosen": {k: v["value"] for k, v in chosen.items()},
        "params": params or {},
        "validation_curve": np.asarray(run["validation_curve"]).tolist(),
        "video_fps": fps, "device": run["training_device"],
    }


def write_dlc_layout(name: str, folder: Path) -> Path:
    """A flat DLC-layout copy (CollectedData.csv + labeled-data/*.png + split.json) of an
    imported dataset, for the DeepLabCut harness."""
    import cv2
    import pandas as pd

    from workflow.pipeline import train

    key = {"dataset": name}
    frames = (train.LabeledDataset.Frame & key).to_dicts(order_by="frame_id")
    ids = [f["frame_id"] for f in frames]
    images = train.LabeledDataset.images(key, ids)
    kp = train.LabeledDataset.keypoints(key, ids)[:, 0]
    parts = train.LabeledDataset.bodyparts(key)
    (folder / "labeled-data").mkdir(parents=True, exist_ok=True)
    rows, names = [], {}
    for f, image, pts in zip(frames, images, kp, strict=True):
        file = f"labeled-data/img{f['frame_id']:05d}.png"
        cv2.imwrite(str(folder / file), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        names[f["frame_name"]] = file
        rows.append(pts.reshape(-1))
    columns = pd.MultiIndex.from_tuples([("bench", p, c) for p in parts for c in ("x", "y")],
                                        names=["scorer", "bodyparts", "coords"])
    pd.DataFrame(np.asarray(rows), index=list(names.values()), columns=columns).to_csv(
        folder / "CollectedData.csv")
    split = json.loads(Path(datasets()[name]["split"]).read_text())
    (folder / "split.json").write_text(json.dumps(
        {"train": [names[n] for n in split["train"]], "test": [names[n] for n in split["test"]]}))
    return folder


def run_dlc(name: str, spec: dict, work: Path, epochs: int, crop: int, video_frames: int) -> dict:
    """DeepLabCut 3.0.2 (cspnext_s, random init) on the same split; its JSON line."""
    data = spec["path"] if spec["kind"] == "dlc" else write_dlc_layout(name, work / f"dlc_{name}")
    out = work / "dlc_results"
    cmd = [str(DLC_PYTHON), str(DLC_HARNESS), "--data", str(data), "--name", name,
           "--net", "cspnext_s", "--epochs", str(epochs), "--batch-size", "8",
           "--crop", str(crop), "--video-frames", str(video_frames), "--wait-idle", "0",
           "--out-dir", str(out), "--work", str(work / "dlc_work")]
    if spec["kind"] != "dlc" or not spec["video"].is_file():
        cmd += ["--video", str(spec["video"])] if spec["video"].is_file() else ["--skip-video"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:], "command": " ".join(cmd)}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_minutes"] = (time.perf_counter() - t0) / 60.0
    return result


def cpu_model() -> str:
    """The CPU's model name and its widest vector unit: speeds differ 2x between them."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                 if line.startswith("model name")), "unknown CPU")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines()
                  if line.startswith("flags")), [])
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{name}, {vector}"


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}"


def worst_part(ours: dict) -> str:
    """The body part with the largest mean test error and that error over the median
    keypoint error (recomputed, so results written under an older rule read the same)."""
    parts = {k: v for k, v in ours["per_bodypart_px"].items() if v is not None}
    if not parts or not ours.get("median_px"):
        return "–"
    name = max(parts, key=parts.get)
    return f"{name} {parts[name]:.1f} px, {parts[name] / ours['median_px']:.1f}x"


def markdown(results: list[dict], meta: dict) -> str:
    """The side-by-side table."""
    lines = [
        f"Table written on: {meta['machine']}; torch {meta['torch']}. Random initialisation, "
        "default parameters (`{}`), test frames of each split. Each row's runs (ours / "
        "DeepLabCut): date and the machine's CPU vector unit.",
        "",
        "| dataset | mean px | median px | RMSE px | PCK@5 | p-cutoff px | worst part, x median "
        "| iterations (kept) | train min | video frames/s | chosen (scale, crop, stride) "
        "| DLC mean px | DLC PCK@5 | DLC train min | DLC video frames/s | runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def run(result: dict | None) -> str:
        if not result:
            return "–"
        info = result.get("meta", {})
        unit = re.search(r"AVX[-\w]*|no AVX", info.get("machine", ""))
        again = info.get("rescored", {}).get("date")
        return (f"{info.get('date', '?')} ({unit.group(0) if unit else '?'})"
                + (f", scored again {again}" if again else ""))

    for r in results:
        o, d = r["ours"], r.get("dlc") or {}
        test = d.get("own_metrics", {}).get("test", {})
        dm = {"test_mean_px": test.get("mean_px"), "test_pck5": test.get("pck@5px")}
        d = {"wall_minutes": d.get("train", {}).get("wall_s", 0) / 60 or None,
             "video_fps": d.get("video", {}).get("fps_end_to_end")} if d else {}
        c = o["chosen"]
        lines.append(
            f"| {o['dataset']} | {_fmt(o['mean_px'])} | {_fmt(o['median_px'])} "
            f"| {_fmt(o['rmse_px'])} | {_fmt(o['pck5'], 3)} | {_fmt(o['pcutoff_px'])} "
            f"| {worst_part(o)} | {o['iterations']} ({o['best_iteration']}) "
            f"| {_fmt(o['train_minutes'], 1)} | {_fmt(o['video_fps'], 1)} "
            f"| {c.get('input_scale')}, {c.get('crop_size')}, {c.get('output_stride')} "
            f"| {_fmt(dm.get('test_mean_px'))} | {_fmt(dm.get('test_pck5'), 3)} "
            f"| {_fmt(d.get('wall_minutes'), 1)} | {_fmt(d.get('video_fps'), 2)} "
            f"| {run(o)} / {run(r.get('dlc'))} |")
    lines += ["", "Per body part (mean test error, px):", ""]
    for r in results:
        o = r["ours"]
        parts = ", ".join(f"{k} {_fmt(v, 1)}" for k, v in o["per_bodypart_px"].items())
        lines.append(f"- {o['dataset']}: {parts}")
    lines += ["", "Confidence (test frames): fraction of visible labels above the cut-off, "
              "their error vs the error below it, and the fraction of absent/occluded parts "
              "predicted below it:", ""]
    for r in results:
        o = r["ours"]
        lines.append(f"- {o['dataset']}: above {_fmt(o['fraction_above_pcutoff'], 3)}, error "
                     f"above {_fmt(o['pcutoff_px'])} px vs below "
                     f"{_fmt(o['error_below_pcutoff_px'])} px, absent below cut-off "
                     f"{_fmt(o['absent_below_pcutoff'], 3)}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(datasets()),
                    help=f"subset of: {', '.join(datasets())}")
    ap.add_argument("--dlc", action="store_true", help="also run DeepLabCut 3.0.2 on each split")
    ap.add_argument("--no-ours", action="store_true", help="skip element-pose (DeepLabCut only)")
    ap.add_argument("--table", action="store_true", help="only rebuild accuracy.md")
    ap.add_argument("--dlc-epochs", type=int, default=150)
    ap.add_argument("--dlc-crop", type=int, default=256)
    ap.add_argument("--video-frames", type=int, default=500)
    ap.add_argument("--home", default=None, help="ELEMENT_POSE_HOME (default: a fresh temp dir)")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--params", type=json.loads, default={},
                    help='training parameter set as JSON (default {}), e.g. \'{"max_seconds": 660}\' '
                         'to give training the time a slower machine would')
    ap.add_argument("--rescore", action="store_true",
                    help="evaluate the model already trained in --home again (after a change "
                         "to decoding): its evaluation rows are deleted and recomputed, the "
                         "training is not repeated and keeps its figures")
    ap.add_argument("--tag", default="", help="suffix of the result file names (ours_<dataset><tag>.json)")
    args = ap.parse_args()

    table = datasets()
    unknown = [d for d in args.datasets if d not in table]
    if unknown:
        raise SystemExit(f"Unknown datasets {unknown}; choose from {list(table)}.")
    missing = [d for d in args.datasets if not Path(table[d]["path"]).exists()]
    if missing:
        raise SystemExit(f"Data not found for {missing} under {DATA}.")
    work = Path(args.home or tempfile.mkdtemp(prefix="element_pose_accuracy_"))
    os.environ["ELEMENT_POSE_HOME"] = str(work)
    os.environ.setdefault("ELEMENT_POSE_PREFIX", "bench_")
    sys.path.insert(0, str(REPO))
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": f"{platform.node()}, {os.cpu_count()} CPU cores ({cpu_model()})"
            + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
            "command": " ".join(["python", *sys.argv])}
    for name in [] if args.table else args.datasets:
        print(f"== {name}", flush=True)
        if not args.no_ours:
            earlier = {}
            if args.rescore:
                from workflow.pipeline import model

                (model.ModelEvaluation & {"model_name": f"bench_{name}"}).delete(prompt=False)
                path = out / f"ours_{name}{args.tag}.json"
                earlier = json.loads(path.read_text()) if path.is_file() else {}
            ours = {**run_ours(name, table[name], args.video_frames, args.params), "meta": meta}
            if args.rescore:  # the import and training were the earlier run's
                ours["import_seconds"] = earlier.get("import_seconds", ours["import_seconds"])
                ours["meta"] = {**earlier.get("meta", meta), "rescored": meta}
            (out / f"ours_{name}{args.tag}.json").write_text(json.dumps(ours, indent=1))
            print(json.dumps(ours), flush=True)
        if args.dlc:
            if args.no_ours:  # the DLC layout of a SLEAP dataset is written from the tables
                from workflow.pipeline import train

                if table[name]["kind"] == "sleap" and not train.LabeledDataset & {"dataset": name}:
                    train.LabeledDataset.import_sleap(table[name]["path"], name,
                                                      include_predicted=True)
            dlc = run_dlc(name, table[name], work, args.dlc_epochs, args.dlc_crop,
                          args.video_frames)
            (out / f"dlc_{name}.json").write_text(json.dumps({**dlc, "meta": meta}, indent=1))
            print(json.dumps(dlc)[:2000], flush=True)
    results = []
    for name in table:
        ours, dlc = out / f"ours_{name}.json", out / f"dlc_{name}.json"
        if ours.is_file():
            results.append({"ours": json.loads(ours.read_text()),
                            "dlc": json.loads(dlc.read_text()) if dlc.is_file() else None})
    text = markdown(results, meta)
    (out / "accuracy.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
