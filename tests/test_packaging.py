"""One importable name: a regular (non-editable) install gives ``trainmap`` only.

The wheel is built from this checkout and installed with ``pip install --target``
into a fresh folder (its dependencies come from the test environment), then used
from another folder that holds a user's own ``app.py`` and ``trainer.py``: before
the package was one name, those shadowed trainmap's parts.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

USER_SCRIPT = """
import sys
from pathlib import Path

import torch
from torch import nn

import app, trainer  # the user's own modules, next to this script
assert app.MINE and trainer.MINE

import trainmap
from trainmap import Tracker
from trainmap.trainer import rundir

installed = Path(sys.argv[1])
assert Path(trainmap.__file__).is_relative_to(installed), trainmap.__file__

model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
with Tracker(model, hook_points=["0", "2"], run_dir="runs/exp/seed-0", seed=0) as tracker:
    for epoch in range(1, 4):
        tracker.log(epoch, train_loss=torch.tensor(1.0 / epoch))
frame = rundir.read_metrics("runs/exp/seed-0")
assert list(frame["epoch"]) == [1, 2, 3], frame

from trainmap.app.main import create_app

client = create_app("runs", cache_dir="cache").server.test_client()
assert client.get("/").status_code == 200
css = client.get("/assets/style.css")
assert css.status_code == 200 and b"{" in css.data, "the installed stylesheet is not served"
print("ok")
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(REPO),
        ],
        check=True,
        timeout=600,
    )
    return target


@pytest.mark.slow
def test_a_regular_install_holds_one_top_level_package(installed):
    top_level = sorted(
        p.name for p in installed.iterdir() if not p.name.endswith((".dist-info", ".egg-info"))
    )
    # bin/ holds the console script
    assert top_level == ["bin", "trainmap"]
    assert (installed / "trainmap" / "assets" / "style.css").is_file()
    for part in ("trainer", "analysis", "app"):
        assert (installed / "trainmap" / part / "__init__.py").is_file()


@pytest.mark.slow
def test_a_regular_install_works_beside_a_users_app_and_trainer(installed, tmp_path):
    (tmp_path / "app.py").write_text("MINE = True\n")
    (tmp_path / "trainer.py").write_text("MINE = True\n")
    (tmp_path / "script.py").write_text(textwrap.dedent(USER_SCRIPT))
    env = {"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "script.py", str(installed)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")
    cli = subprocess.run(
        [sys.executable, "-m", "trainmap", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    assert "train" in cli.stdout and "serve" in cli.stdout
