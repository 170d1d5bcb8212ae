"""The README's commands, the CI script and the CLI agree, and the CLI works."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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
