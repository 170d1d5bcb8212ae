"""The README's commands, the CI script and the CLI agree, and the CLI works."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    block = re.search(r"## Set up.*?```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_has_two_setup_commands_and_ci_runs_the_test_one():
    commands = readme_commands()
    assert len(commands) == 2
    assert commands[0].endswith("element-pose demo")
    assert "pytest" in commands[1]
    assert commands[1] in (REPO / ".ci" / "run").read_text()


def test_torch_and_torchvision_are_a_working_pair():
    import torch
    import torchvision
    from torchvision.ops import nms

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    assert torchvision.__version__.split("+")[0]


def test_cli_db_prints_backend_and_no_password(pipeline, monkeypatch):
    import os

    env = dict(os.environ)
    secret = env.get("DJ_PASS") or ""
    out = subprocess.run([sys.executable, "-m", "element_pose.cli", "db"], capture_output=True,
                         text=True, env=env, check=True).stdout
    assert "database:" in out and "store:" in out
    assert pipeline.connection_info.backend in out
    info = pipeline.connection_info
    if len(secret) > 3 and secret not in (info.user, info.host, info.store_location):
        assert secret not in out


@pytest.mark.skipif(bool(os.environ.get("DJ_HOST")), reason="the embedded database only")
def test_copied_home_with_a_running_server_is_refused(tmp_path):
    """A home copied while its server runs would reach the original database with the copy's
    own store; it is detected. Once the original server stops, the copy starts its own."""
    import shutil
    import stat

    original, copy = tmp_path / "original", tmp_path / "copy"
    env = {**os.environ, "ELEMENT_POSE_HOME": str(original), "ELEMENT_POSE_KEEP_SERVER": "1"}
    env.pop("DJ_HOST", None)
    run = [sys.executable, "-m", "element_pose.cli", "db"]
    try:
        assert subprocess.run(run, env=env, capture_output=True, timeout=120).returncode == 0

        def sockets(folder, names):
            return [n for n in names if stat.S_ISSOCK(os.lstat(os.path.join(folder, n)).st_mode)]

        shutil.copytree(original, copy, ignore=sockets)
        owner = (original / "pgdata").stat()  # as a user's own `cp -a` would keep it
        for folder, dirs, files in os.walk(copy):
            for name in [".", *dirs, *files]:
                os.chown(os.path.join(folder, name), owner.st_uid, owner.st_gid)
        out = subprocess.run(run, env={**env, "ELEMENT_POSE_HOME": str(copy)},
                             capture_output=True, text=True, timeout=120)
        assert out.returncode != 0
        assert "is a copy of the element-pose home" in out.stderr and str(original) in out.stderr
    finally:
        # Stop the original's server itself (fast shutdown) and wait until it is gone.
        import signal
        import time

        pid = int((original / "pgdata" / "postmaster.pid").read_text().split()[0])
        try:
            os.kill(pid, signal.SIGINT)
            for _ in range(300):
                os.kill(pid, 0)
                time.sleep(0.1)
        except ProcessLookupError:
            pass
    # the original is stopped: the copy's stale pid file is dropped and its own server starts
    out = subprocess.run(run, env={**env, "ELEMENT_POSE_HOME": str(copy),
                                   "ELEMENT_POSE_KEEP_SERVER": "0"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.skipif(bool(os.environ.get("DJ_HOST")), reason="the embedded database only")
def test_readme_lab_pipeline_snippet_runs_as_written(tmp_path):
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Using it in a lab pipeline"):]
    snippet = section[section.index("```python") + 9:section.index("```\n", section.index("```python") + 9)]
    (tmp_path / "my_lab.py").write_text(
        "import datajoint as dj\n"
        "schema = dj.Schema('mylab_upstream')\n"
        "@schema\nclass Session(dj.Manual):\n    definition = 'session: int32'\n"
        "@schema\nclass Device(dj.Lookup):\n    definition = 'device: varchar(32)'\n")
    (tmp_path / "pipeline_snippet.py").write_text(
        snippet + "\nprint('tables', len(model.schema.list_tables()) > 5)\n"
        "from element_pose import db\ndb.stop_embedded_on_exit()\n")
    env = {**os.environ, "ELEMENT_POSE_HOME": str(tmp_path / "home"),
           "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, str(tmp_path / "pipeline_snippet.py")], env=env,
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "tables True" in out.stdout
