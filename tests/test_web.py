"""``element-pose serve``: pages from subject down to a pose result, models, datasets and jobs;
names escaped; keys from URLs checked; a token when asked; a SELECT-only database user; and a
real browser (Chromium) clicking down to a plot and a playing labeled video."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import add_recording

from element_pose.sample import make_sample

pytestmark = pytest.mark.db

EVIL = "<script>alert(1)</script>"
ARTEFACTS = Path(os.environ.get("ELEMENT_POSE_TEST_ARTEFACTS", Path(__file__).parent / "artefacts"))
TINY = {"backbone": "resnet18", "backbone_stride": 8, "head_channels": 32, "input_scale": 1.0,
        "crop_size": 64, "batch_size": 4, "validation_fraction": 0.2, "device": "cpu",
        "iterations": 30, "num_threads": 1}


@pytest.fixture(scope="module")
def lab(pipeline):
    """A subject with a recording analysed by a trained, evaluated model, a labeled video, a
    failed job, and a subject whose name is markup."""
    train, model = pipeline.train, pipeline.model
    root = pipeline.get_pose_root_data_dir()[0]
    sample = make_sample(f"{root}/web", n_frames=40, n_labeled=12, width=96, height=72, seed=11)
    dataset = train.LabeledDataset.import_dlc(sample.project_dir, "web_data")
    split = train.DataSplit.random(dataset, test_fraction=0.25, seed=0)
    task = {**split, **train.TrainingParamSet.insert_new_params(TINY), "run_id": 0}
    train.TrainingTask.insert1(task, skip_duplicates=True)
    train.ModelTraining.populate(task)
    model_key = model.Model.from_training(task, "web_model")
    model.ModelEvaluation.populate({**model_key, **split})
    session, recording = add_recording(pipeline, "web_mouse", "web_cam", sample.video_path)
    pose_key = model.PoseEstimationTask.add(recording, model_key)
    model.PoseEstimation.populate(pose_key)
    model.LabeledVideoTask.insert1({**pose_key, "video_id": 0}, skip_duplicates=True)
    model.LabeledVideo.populate(pose_key)
    pipeline.Subject.insert1({"subject": EVIL}, skip_duplicates=True)
    return {"session": session, "recording": recording, "pose": pose_key, "model": model_key,
            "dataset": dataset}


@pytest.fixture(scope="module")
def client(lab):
    from fastapi.testclient import TestClient

    from element_pose.web.app import create_app

    return TestClient(create_app())


def test_pages_from_subject_to_pose_and_models_datasets_jobs(client, lab):
    from urllib.parse import urlencode

    home = client.get("/")
    assert home.status_code == 200 and "recordings" in home.text
    subjects = client.get("/subjects").text
    assert "web_mouse" in subjects
    # markup from the database is text, not markup
    assert EVIL not in subjects and "&lt;script&gt;alert(1)&lt;/script&gt;" in subjects
    assert "/session?" in client.get("/subject?subject=web_mouse").text
    session = client.get("/session?" + urlencode(lab["session"])).text
    assert "web_model" in session
    pose = client.get("/pose?" + urlencode(lab["pose"]))
    assert pose.status_code == 200
    assert "/plot/trajectory.png" in pose.text and "labeled_video.mp4" in pose.text
    png = client.get("/plot/trajectory.png?" + urlencode({**lab["pose"], "start": 5, "stop": 30}))
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    video = client.get("/media/labeled_video.mp4?" + urlencode({**lab["pose"], "video_id": 0}),
                       headers={"Range": "bytes=0-99"})
    assert video.status_code == 206 and len(video.content) == 100
    models = client.get("/models").text
    assert "web_model" in models and "Leaderboard" in models
    model_page = client.get("/model?model_name=web_model").text
    assert "/plot/learning.png" in model_page and "/image/evaluation.png" in model_page
    assert client.get("/plot/learning.png?model_name=web_model").content[:4] == b"\x89PNG"
    dataset = client.get("/dataset?dataset=web_data").text
    assert "/image/labels.png" in dataset and "Splits" in dataset
    assert client.get("/image/labels.png?dataset=web_data&frame_id=0").content[:4] == b"\x89PNG"
    assert client.get("/jobs").status_code == 200


def test_keys_from_urls_are_checked(client, lab):
    assert client.get("/subject?subject=nobody").status_code == 404
    assert client.get("/session?subject=web_mouse&session_id=abc").status_code == 404
    assert client.get("/pose?subject=web_mouse").status_code == 404       # incomplete key
    assert client.get("/image/labels.png?dataset=web_data&frame_id=99999").status_code == 404
    assert client.get("/media/labeled_video.mp4?path=/etc/passwd").status_code == 404


def test_token(lab):
    from fastapi.testclient import TestClient

    from element_pose.web.app import create_app, serve

    client = TestClient(create_app(token="s3cret"))
    assert client.get("/").status_code == 401
    assert client.get("/?token=wrong").status_code == 401
    assert client.get("/?token=s3cret").status_code == 200
    assert client.get("/models").status_code == 200            # the cookie from the first visit
    fresh = TestClient(create_app(token="s3cret"))
    assert fresh.get("/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    with pytest.raises(SystemExit, match="without a token"):
        serve(host="0.0.0.0", token=None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(env: dict) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "element_pose.cli", "serve", "--port", str(port)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    import httpx

    for _ in range(200):
        try:
            response = httpx.get(url + "/", timeout=30)
        except httpx.HTTPError:
            response = None
        if response is not None:
            if response.status_code == 200:
                return server, url
            server.kill()
            raise AssertionError(f"{response.status_code}: {response.text[-2000:]}\n{server.communicate()[1][-3000:]}")
        assert server.poll() is None, server.communicate()
        time.sleep(0.2)
    server.kill()
    raise AssertionError("the server did not answer")


def test_a_select_only_user_can_browse(pipeline, lab):
    """On the MariaDB and PostgreSQL services: a user with SELECT privileges only, who can
    change nothing."""
    from urllib.parse import urlencode

    import datajoint as dj
    import httpx

    backend = os.environ.get("DJ_BACKEND")
    if not os.environ.get("DJ_HOST"):
        pytest.skip("needs a database server (CI runs it on MariaDB and PostgreSQL)")
    conn = dj.conn()
    user, password = f"reader_{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    prefix = pipeline.db.schema_prefix()
    schemas = [s for s in dj.list_schemas() if s.startswith(prefix)]
    if backend == "postgresql":
        conn.query(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
        for s in schemas:
            conn.query(f'GRANT USAGE ON SCHEMA "{s}" TO {user}')
            conn.query(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{s}" TO {user}')
    else:
        conn.query(f"CREATE USER '{user}'@'%%' IDENTIFIED BY '{password}'")
        for s in schemas:
            conn.query(f"GRANT SELECT ON `{s}`.* TO '{user}'@'%%'")
    _assert_cannot_write(backend, user, password, schemas)
    env = {**os.environ, "DJ_USER": user, "DJ_PASS": password}
    server, url = _start_server(env)
    try:
        pages = ["/", "/subjects", "/subject?subject=web_mouse", "/session?" + urlencode(lab["session"]),
                 "/pose?" + urlencode(lab["pose"]), "/models", "/model?model_name=web_model",
                 "/datasets", "/dataset?dataset=web_data", "/jobs",
                 "/plot/likelihood.png?" + urlencode(lab["pose"])]
        for path in pages:
            response = httpx.get(url + path, timeout=60)
            assert response.status_code == 200, (path, response.text[-1500:])
    finally:
        server.terminate()
        server.communicate(timeout=30)
        if backend != "postgresql":
            conn.query(f"DROP USER '{user}'@'%%'")
        else:
            for s in schemas:
                conn.query(f'REVOKE ALL ON ALL TABLES IN SCHEMA "{s}" FROM {user}')
                conn.query(f'REVOKE ALL ON SCHEMA "{s}" FROM {user}')
            conn.query(f"DROP ROLE {user}")


def _assert_cannot_write(backend: str, user: str, password: str, schemas: list[str]) -> None:
    host = os.environ["DJ_HOST"]
    model = next(s for s in schemas if s.endswith("model"))
    statements = [f"DELETE FROM {{q}}{model}{{q}}.{{q}}video_recording{{q}}",
                  f"CREATE TABLE {{q}}{model}{{q}}.{{q}}intruder{{q}} (x int)",
                  f"CREATE SCHEMA {{q}}{model}_intruder{{q}}"]
    if backend == "postgresql":
        import psycopg2 as driver

        connection = driver.connect(host=host, user=user, password=password, dbname="postgres")
        quote = '"'
    else:
        import pymysql as driver

        connection = driver.connect(host=host, user=user, password=password)
        quote = "`"
    try:
        for statement in statements:
            with connection.cursor() as cursor:
                with pytest.raises(Exception, match="(?i)denied|permission"):
                    cursor.execute(statement.format(q=quote))
            connection.rollback()
    finally:
        connection.close()


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_browser_clicks_from_subject_to_plot_and_playing_video(lab, pose_home):
    """Chromium (Debian's package) driven by Playwright; screenshots in tests/artefacts/."""
    if os.environ.get("DJ_HOST"):
        pytest.skip("the browser test runs once, on the embedded database")
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    server, url = _start_server(dict(os.environ))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url + "/")
            page.click("nav >> text=Subjects")
            page.click("#subjects >> text=web_mouse")
            page.click("#sessions a")
            page.screenshot(path=str(ARTEFACTS / "web_session.png"), full_page=True)
            page.click("#recordings a")
            page.click("#poses >> text=web_model")
            page.wait_for_function("document.getElementById('trajectory').naturalWidth > 0")
            page.select_option("select[name=part]", index=1)
            page.click("button[type=submit]")
            page.wait_for_function("document.getElementById('trajectory').naturalWidth > 0")
            assert "part=" in page.url
            page.eval_on_selector("#video0", "v => v.play()")
            page.wait_for_function("document.getElementById('video0').currentTime > 0.2", timeout=20000)
            page.screenshot(path=str(ARTEFACTS / "web_pose.png"), full_page=True)
            page.click("nav >> text=Models")
            page.click("#leaderboard >> text=web_model")
            page.wait_for_function("document.getElementById('curves').naturalWidth > 0")
            page.screenshot(path=str(ARTEFACTS / "web_model.png"), full_page=True)
            page.click("nav >> text=Datasets")
            page.click("#datasets >> text=web_data")
            page.screenshot(path=str(ARTEFACTS / "web_dataset.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.communicate(timeout=30)
    assert (ARTEFACTS / "web_pose.png").stat().st_size > 10_000
