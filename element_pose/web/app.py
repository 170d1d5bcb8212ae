"""``element-pose serve``: a read-only web page over the lab's pose database (FastAPI).

Every page is built from rows: keys come from the query string and are typed and checked
against the table (:meth:`LabDatabase.key`); images, plots and videos are rendered or read from
their rows, never from a path in the URL. Jinja2 escapes every name from the database. Lists
are paginated and never fetch blobs; a pose page fetches the arrays of the body part it plots.
With a token, every request must carry it (``?token=`` once, then a cookie, or an
``Authorization: Bearer`` header).
"""

from __future__ import annotations

import hmac
import io
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from fastapi.templating import Jinja2Templates

from .data import PAGE_SIZE, LabDatabase, NotFound

TEMPLATES = Path(__file__).parent / "templates"
COOKIE = "element_pose_token"
MAX_PLOT_POINTS = 20_000


def cell(text: Any, url: str | None = None, img: str | None = None, error: bool = False) -> dict:
    if isinstance(text, float):
        text = f"{text:.3g}" if np.isfinite(text) else ""
    return {"text": "" if text is None else str(text), "url": url, "img": img, "error": error}


def link(path: str, key: dict, **extra: Any) -> str:
    return f"{path}?{urlencode({**key, **extra})}"


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


def create_app(token: str | None = None, database: LabDatabase | None = None):
    """The web application (FastAPI). ``token``: required on every request when given."""
    db = database or LabDatabase()
    templates = Jinja2Templates(directory=str(TEMPLATES))
    app = FastAPI(title="element-pose", docs_url=None, redoc_url=None, openapi_url=None)
    m = db.model

    @app.middleware("http")
    async def check_token(request: Request, call_next):
        if token is None:
            return await call_next(request)
        given = (request.query_params.get("token") or request.cookies.get(COOKIE)
                 or request.headers.get("authorization", "").removeprefix("Bearer ").strip())
        if not given or not hmac.compare_digest(given, token):
            return PlainTextResponse("A token is needed: open the link with ?token=...", status_code=401)
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    @app.exception_handler(NotFound)
    async def not_found(request: Request, error: NotFound):
        return PlainTextResponse(f"Not found: {error}", status_code=404)

    def page(request: Request, title: str, blocks: list[dict], crumbs: list | None = None):
        return templates.TemplateResponse(request, "page.html", {
            "title": title, "blocks": blocks, "crumbs": crumbs or []})

    def table(title: str, headers: list[str], rows: list[list[dict]], id: str = "", page_no: int = 1,
              pages: int = 1, page_url: str = "") -> dict:
        return {"kind": "table", "title": title, "headers": headers, "rows": rows, "id": id,
                "page": page_no, "pages": pages, "page_url": page_url}

    def number(request: Request, name: str = "page", default: int = 1) -> int:
        try:
            return int(request.query_params.get(name, default))
        except ValueError:
            raise NotFound(f"{name} must be a number") from None

    # -- home, subjects, sessions, recordings ---------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    def home(request: Request):
        counts = db.counts()
        return page(request, "Lab pose database", [
            {"kind": "facts", "pairs": list(counts.items())},
            {"kind": "text", "text": f"Schemas: {', '.join(db.prefix + s for s in db.modules)}"}])

    @app.get("/subjects", response_class=HTMLResponse)
    def subjects(request: Request):
        if db.subject is None:
            raise NotFound("no Subject table upstream of the recordings")
        rows, pages = db.page(db.subject, number(request))
        pk = db.subject.primary_key
        body = [[cell(r[pk[0]], link("/subject", {k: r[k] for k in pk}))]
                + [cell(r[k]) for k in r if k not in pk] for r in rows]
        headers = list(rows[0]) if rows else pk
        return page(request, "Subjects", [table("", headers, body, "subjects", number(request), pages,
                                                 "/subjects?")])

    @app.get("/subject", response_class=HTMLResponse)
    def subject(request: Request):
        key = db.key(db.subject, request.query_params)
        sessions = db.session & key
        rows, pages = db.page(sessions, number(request))
        spk = db.session.primary_key
        body = []
        for r in rows:
            skey = {k: r[k] for k in spk}
            count = len(m.VideoRecording & skey)
            body.append([cell(", ".join(str(r[k]) for k in spk if k not in key), link("/session", skey))]
                        + [cell(r[k]) for k in r if k not in spk] + [cell(count)])
        headers = (["session"] + [k for k in (rows[0] if rows else {}) if k not in spk] + ["recordings"])
        name = ", ".join(str(v) for v in key.values())
        return page(request, f"Subject {name}", [
            {"kind": "facts", "pairs": list((db.plain(db.subject) & key).fetch1().items())},
            table("Sessions", headers, body, "sessions", number(request), pages,
                  link("/subject", key) + "&")], [("Subjects", "/subjects")])

    @app.get("/session", response_class=HTMLResponse)
    def session(request: Request):
        key = db.key(db.session, request.query_params)
        recordings = (m.VideoRecording & key).to_dicts()
        body = []
        for r in recordings:
            rkey = {k: r[k] for k in m.VideoRecording.primary_key}
            info = (db.plain(m.RecordingInfo) & rkey).to_dicts()
            info = info[0] if info else {}
            poses = (m.PoseEstimation & rkey).to_dicts()
            body.append([cell(r["recording_id"], link("/recording", rkey)), cell(r.get("device", "")),
                         cell(info.get("frame_count")), cell(info.get("fps")),
                         cell(f"{info['px_width']}x{info['px_height']}" if info else ""),
                         cell(", ".join(p["model_name"] for p in poses))])
        subject_key = {k: key[k] for k in db.subject.primary_key} if db.subject is not None else {}
        return page(request, "Session " + ", ".join(f"{k}={v}" for k, v in key.items()), [
            {"kind": "facts", "pairs": list((db.plain(db.session) & key).fetch1().items())},
            table("Recordings", ["recording", "camera", "frames", "fps", "size", "pose results"], body,
                  "recordings")],
            [("Subjects", "/subjects"), (str(list(subject_key.values())[0]) if subject_key else "",
                                          link("/subject", subject_key))])

    @app.get("/recording", response_class=HTMLResponse)
    def recording(request: Request):
        key = db.key(m.VideoRecording, request.query_params)
        info = (db.plain(m.RecordingInfo) & key).to_dicts()
        files = (m.VideoRecording.File & key).to_dicts(order_by="file_id")
        poses = (m.PoseEstimation & key).to_dicts()
        body = [[cell(p["model_name"], link("/pose", {**key, "model_name": p["model_name"]})),
                 cell(p["pose_frame_count"]), cell(p["analysis_device"]), cell(p["frames_per_second"]),
                 cell(p["pose_estimation_time"])] for p in poses]
        skey = {k: key[k] for k in db.session.primary_key}
        return page(request, f"Recording {key['recording_id']}", [
            {"kind": "facts", "pairs": list(info[0].items()) if info else [("RecordingInfo", "not populated")]},
            table("Files", ["file"], [[cell(f["file_path"])] for f in files]),
            table("Pose results", ["model", "frames", "device", "frames/s", "when"], body, "poses")],
            [("Subjects", "/subjects"), ("session", link("/session", skey))])

    # -- a pose result ---------------------------------------------------------------------

    @app.get("/pose", response_class=HTMLResponse)
    def pose(request: Request):
        key = db.key(m.PoseEstimation, request.query_params)
        row = (m.PoseEstimation & key).fetch1()
        parts = db.bodyparts(key)
        part = request.query_params.get("part", parts[0])
        if part not in parts:
            raise NotFound(f"body part {part!r}")
        frames = int(row["pose_frame_count"])
        start, stop = number(request, "start", 0), number(request, "stop", frames)
        start, stop = max(0, min(start, frames - 1)), max(1, min(stop, frames))
        likelihood, _ = db.pose_arrays(key, None, ("likelihood",))
        cutoff = 0.6
        below = []
        for k, name in enumerate(parts):
            low = np.flatnonzero(likelihood[:, k, 0] < cutoff)
            below.append([cell(name), cell(len(low)), cell(f"{len(low) / max(frames, 1):.1%}"),
                          cell(", ".join(str(i) for i in low[:15]) + (" ..." if len(low) > 15 else ""))])
        plot_key = {**key, "part": part, "start": start, "stop": stop}
        blocks: list[dict] = [
            {"kind": "facts", "pairs": [(k, v) for k, v in row.items() if k not in key]},
            {"kind": "form", "title": "Plot", "action": "/pose", "hidden": list(key.items()),
             "fields": [("first frame", "start", start), ("last frame", "stop", stop)],
             "choices": parts, "choice_label": "body part", "choice_name": "part", "chosen": part},
            {"kind": "image", "id": "trajectory", "src": link("/plot/trajectory.png", plot_key),
             "alt": f"trajectory of {part}"},
            {"kind": "image", "id": "likelihood", "src": link("/plot/likelihood.png", plot_key),
             "alt": f"likelihood of {part}"},
            table(f"Frames below the cut-off ({cutoff})", ["body part", "frames", "fraction", "first frames"],
                  below, "below")]
        filtered = (m.FilteredPose & key).to_dicts() if hasattr(m, "FilteredPose") else []
        blocks.append(table("Filtered versions", ["filter parameter set"],
                            [[cell(f["filter_paramset_id"])] for f in filtered], "filtered"))
        videos = (db.plain(m.LabeledVideo) & key).to_dicts() if hasattr(m, "LabeledVideo") else []
        for v in videos:
            vkey = {**key, "video_id": v["video_id"]}
            blocks.append({"kind": "video", "title": f"Labeled video {v['video_id']}", "id": f"video{v['video_id']}",
                           "src": link("/media/labeled_video.mp4", vkey), "width": max(320, min(640, v["video_width"]))})
        rkey = {k: key[k] for k in m.VideoRecording.primary_key}
        return page(request, f"Pose: {key['model_name']} on recording {key['recording_id']}", blocks,
                    [("Subjects", "/subjects"), ("recording", link("/recording", rkey))])

    def _plot(request: Request, kind: str) -> Response:
        from ..plotting import plot_likelihood, plot_trajectory

        key = db.key(m.PoseEstimation, request.query_params)
        parts = db.bodyparts(key)
        part = request.query_params.get("part", parts[0])
        if part not in parts:
            raise NotFound(f"body part {part!r}")
        array, names = db.pose_arrays(key, [part])
        start, stop = number(request, "start", 0), number(request, "stop", len(array))
        start, stop = max(0, start), min(len(array), max(start + 1, stop))
        clip = array[start:stop]
        times = np.arange(start, stop, dtype=float)
        if len(clip) > MAX_PLOT_POINTS:  # an hour at 30 fps: plot every n-th frame; zoom for all
            step = -(-len(clip) // MAX_PLOT_POINTS)
            clip, times = clip[::step], times[::step]
        plot = plot_trajectory if kind == "trajectory" else plot_likelihood
        figure = plot(clip, names, timestamps=times, pcutoff=None if kind == "trajectory" else 0.6)
        return Response(_png(figure), media_type="image/png")

    @app.get("/plot/trajectory.png")
    def trajectory_png(request: Request):
        return _plot(request, "trajectory")

    @app.get("/plot/likelihood.png")
    def likelihood_png(request: Request):
        return _plot(request, "likelihood")

    @app.get("/media/labeled_video.mp4")
    def labeled_video(request: Request):
        key = db.key(m.LabeledVideo, request.query_params)
        data = (m.LabeledVideo & key).fetch1("video").read()
        size = len(data)
        ranged = request.headers.get("range", "")
        if ranged.startswith("bytes="):
            first, _, last = ranged[6:].partition("-")
            first = int(first or 0)
            last = min(int(last) if last else size - 1, size - 1)
            return Response(data[first:last + 1], status_code=206, media_type="video/mp4", headers={
                "Content-Range": f"bytes {first}-{last}/{size}", "Accept-Ranges": "bytes"})
        return Response(data, media_type="video/mp4", headers={"Accept-Ranges": "bytes"})

    # -- models ----------------------------------------------------------------------------

    @app.get("/models", response_class=HTMLResponse)
    def models(request: Request):
        evaluations = db.plain(m.ModelEvaluation)
        rows, pages = db.page(evaluations, number(request), order_by=["test_error_px", "model_name"])
        body = [[cell(r["model_name"], link("/model", {"model_name": r["model_name"]})), cell(r["dataset"]),
                 cell(r["split_id"]), cell(r["test_error_px"]), cell(r["test_median_error_px"]),
                 cell(r["test_pck5"]), cell(r["test_error_pcutoff_px"]), cell(r["train_error_px"])]
                for r in rows]
        listed = db.page(db.plain(m.Model), 1, order_by="model_name", size=PAGE_SIZE)[0]
        everyone = [[cell(r["model_name"], link("/model", {"model_name": r["model_name"]})),
                     cell(r["source_tool"]), cell(r["scorer"]), cell(r["created_at"])] for r in listed]
        return page(request, "Models", [
            table("Leaderboard (test error, px)", ["model", "dataset", "split", "test error", "median",
                                                   "PCK@5", "error above cut-off", "train error"],
                  body, "leaderboard", number(request), pages, "/models?"),
            table("All models", ["model", "tool", "scorer", "created"], everyone, "models")])

    @app.get("/model", response_class=HTMLResponse)
    def model_page(request: Request):
        key = db.key(m.Model, request.query_params)
        row = (db.plain(m.Model) & key).fetch1()
        blocks: list[dict] = [{"kind": "facts", "pairs": [(k, v) for k, v in row.items() if k != "config"]}]
        training = (m.Model.Training & key).to_dicts()
        if training and db.train is not None:
            tkey = {k: v for k, v in training[0].items() if k != "model_name"}
            run = (db.plain(db.train.ModelTraining) & tkey).fetch1()
            blocks.append({"kind": "facts", "title": "Provenance", "pairs": [
                ("dataset", tkey.get("dataset")), ("split", tkey.get("split_id")),
                ("parameter set", tkey.get("paramset_id")), ("run", tkey.get("run_id")),
                ("iterations", run["iterations"]), ("best iteration", run["best_iteration"]),
                ("training minutes", f"{run['train_seconds'] / 60:.1f}"), ("device", run["training_device"])]})
            blocks.append({"kind": "image", "title": "Learning and validation curves", "id": "curves",
                           "src": link("/plot/learning.png", key), "alt": "learning curve"})
        if hasattr(m, "TrainingInit") and training:
            parents = (m.TrainingInit & training[0]).to_dicts()
            if parents:
                blocks.append({"kind": "facts", "title": "Fine-tuned from", "pairs": [
                    ("parent model", parents[0]["parent_model"])]})
        per_part = (m.ModelEvaluation.BodyPart & key).to_dicts(order_by=["dataset", "split_id", "body_part"])
        blocks.append(table("Errors per body part (px)", ["dataset", "split", "body part", "train", "test"],
                            [[cell(p["dataset"]), cell(p["split_id"]), cell(p["body_part"]),
                              cell(p["train_error_px"]), cell(p["test_error_px"])] for p in per_part], "parts"))
        frames = (m.ModelEvaluation.Frame * db.train.DataSplit.Frame & key & {"subset": "test"}).proj(
            "error_px").to_dicts(limit=24, order_by=["error_px DESC"]) if db.train is not None else []
        blocks.append(table("Test frames: prediction (dots) and label (crosses), worst first",
                            ["frame", "error (px)", "image"],
                            [[cell(f["frame_id"]), cell(f["error_px"]),
                              cell(f"frame {f['frame_id']}", img=link("/image/evaluation.png", {
                                  k: f[k] for k in ("model_name", "dataset", "split_id", "frame_id")}))]
                             for f in frames], "evaluation"))
        return page(request, f"Model {key['model_name']}", blocks, [("Models", "/models")])

    @app.get("/plot/learning.png")
    def learning_png(request: Request):
        from ..plotting import plot_learning_curve

        key = db.key(m.Model, request.query_params)
        tkey = (m.Model.Training & key).fetch1()
        run = (db.train.ModelTraining & tkey).fetch1("learning_curve", "validation_curve")
        curve, validation = (np.asarray(run[0], float), np.asarray(run[1], float))
        figure = plot_learning_curve(curve, validation=validation if validation.size else None)
        return Response(_png(figure), media_type="image/png")

    def _frame_image(dataset: str, frame_id: int) -> np.ndarray:
        import cv2

        data = (db.train.LabeledDataset.Frame & {"dataset": dataset, "frame_id": frame_id}).fetch1("image").read()
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def _labels(dataset: str, frame_id: int) -> tuple[np.ndarray, list[str]]:
        parts = [r["body_part"] for r in (db.train.LabeledDataset.BodyPart & {"dataset": dataset}).to_dicts(
            order_by="part_index")]
        labels = np.full((len(parts), 3), np.nan)
        for r in (db.train.LabeledDataset.Label & {"dataset": dataset, "frame_id": frame_id}).to_dicts():
            if r["x"] is not None:
                labels[parts.index(r["body_part"])] = (r["x"], r["y"], 1.0)
        return labels, parts

    @app.get("/image/evaluation.png")
    def evaluation_png(request: Request):
        from ..plotting import plot_labeled_frame

        key = db.key(m.ModelEvaluation.Frame, request.query_params)
        prediction = np.asarray((m.ModelEvaluation.Frame & key).fetch1("prediction"), float)
        labels, parts = _labels(key["dataset"], key["frame_id"])
        figure = plot_labeled_frame(_frame_image(key["dataset"], key["frame_id"]), prediction, parts,
                                    ground_truth=labels[:, :2])
        return Response(_png(figure), media_type="image/png")

    # -- labeled datasets ------------------------------------------------------------------

    @app.get("/datasets", response_class=HTMLResponse)
    def datasets(request: Request):
        if db.train is None:
            raise NotFound("no train schema")
        rows, pages = db.page(db.plain(db.train.LabeledDataset), number(request))
        body = [[cell(r["dataset"], link("/dataset", {"dataset": r["dataset"]})), cell(r["source_format"]),
                 cell(r["labeled_frame_count"]), cell(r["scorer"]), cell(r["dataset_description"])]
                for r in rows]
        return page(request, "Labeled datasets", [table("", ["dataset", "format", "frames", "scorer",
                                                             "description"], body, "datasets",
                                                        number(request), pages, "/datasets?")])

    @app.get("/dataset", response_class=HTMLResponse)
    def dataset(request: Request):
        t = db.train
        key = db.key(t.LabeledDataset, request.query_params)
        row = (db.plain(t.LabeledDataset) & key).fetch1()
        parts = [r["body_part"] for r in (t.LabeledDataset.BodyPart & key).to_dicts(order_by="part_index")]
        splits = []
        for s in (t.DataSplit & key).to_dicts():
            skey = {**key, "split_id": s["split_id"]}
            n_test = len(t.DataSplit.Frame & skey & {"subset": "test"})
            splits.append([cell(s["split_id"]), cell(s["split_method"]), cell(len(t.DataSplit.Frame & skey) - n_test),
                           cell(n_test)])
        blocks: list[dict] = [
            {"kind": "facts", "pairs": [(k, v) for k, v in row.items() if k != "skeleton"]},
            table("Body parts", ["body part"], [[cell(p)] for p in parts], "bodyparts"),
            table("Splits", ["split", "method", "train frames", "test frames"], splits, "splits")]
        refine = db.modules.get("refine")
        if refine is not None:
            versions = ((refine.DatasetVersion & key).to_dicts()
                        + (refine.DatasetVersion & {"parent_dataset": key["dataset"]}).to_dicts())
            blocks.append(table("Versions", ["dataset", "parent dataset", "labeling round"],
                                [[cell(v["dataset"], link("/dataset", {"dataset": v["dataset"]})),
                                  cell(v["parent_dataset"], link("/dataset", {"dataset": v["parent_dataset"]})),
                                  cell(v.get("labeling_round", ""))] for v in versions], "versions"))
        frames, pages = db.page(t.LabeledDataset.Frame.proj("frame_name", "width", "height") & key,
                                number(request), size=20)
        blocks.append(table("Labeled frames", ["frame", "name", "image"],
                            [[cell(f["frame_id"]), cell(f["frame_name"]),
                              cell(f["frame_name"], img=link("/image/labels.png", {**key, "frame_id": f["frame_id"]}))]
                             for f in frames], "frames", number(request), pages, link("/dataset", key) + "&"))
        return page(request, f"Dataset {key['dataset']}", blocks, [("Datasets", "/datasets")])

    @app.get("/image/labels.png")
    def labels_png(request: Request):
        from ..plotting import plot_labeled_frame

        key = db.key(db.train.LabeledDataset.Frame, request.query_params)
        labels, parts = _labels(key["dataset"], key["frame_id"])
        figure = plot_labeled_frame(_frame_image(key["dataset"], key["frame_id"]), labels, parts)
        return Response(_png(figure), media_type="image/png")

    # -- work ------------------------------------------------------------------------------

    @app.get("/jobs", response_class=HTMLResponse)
    def jobs(request: Request):
        from ..jobs import job_report

        report = job_report(db.computed_tables())
        summary = [[cell(e["table"]), cell(e["pending"]), cell(len(e["reserved"])), cell(len(e["errors"]))]
                   for e in report]
        reserved = [[cell(e["table"]), cell(r["key"]), cell(r["host"]), cell(r["pid"]), cell(r["since"])]
                    for e in report for r in e["reserved"]]
        errors = [[cell(e["table"]), cell(r["key"]), cell(r["host"]), cell(r["when"]),
                   cell((r["message"] or "").splitlines()[0][:300] if r["message"] else "", error=True)]
                  for e in report for r in e["errors"]]
        return page(request, "Work", [
            table("Per table", ["table", "pending", "reserved", "failed"], summary, "jobs"),
            table("Reserved (in progress)", ["table", "key", "host", "pid", "since"], reserved, "reserved"),
            table("Failed", ["table", "key", "host", "when", "error"], errors, "errors")])

    return app


def serve(host: str = "127.0.0.1", port: int = 8000, token: str | None = None) -> None:
    """Run the web page with uvicorn; a token is required when bound beyond this machine."""
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        raise SystemExit(f"Refusing to serve the lab database on {host} without a token: pass "
                         "--token (or set ELEMENT_POSE_WEB_TOKEN), or bind 127.0.0.1.")
    uvicorn.run(create_app(token=token), host=host, port=port, log_level="warning")
