"""``trainmap screenshots`` on a small fitted root, in real headless chromium.

Two synthetic experiments (8 runs x 60 checkpoints each) are fitted; the
command writes its four PNGs into a temporary folder (never into docs/). The
missing-selenium case is one line, as every CLI error.
"""

from __future__ import annotations

import struct
import sys
import warnings

import pytest
from test_app_browser import xdg_dirs  # noqa: F401  (chromium's profile out of the home)

from trainmap.analysis.synthetic import write_synthetic_experiment
from trainmap.app import screenshots
from trainmap.trainer.cli import main as cli_main

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def fitted_root(tmp_path_factory):
    from trainmap import analysis

    root = tmp_path_factory.mktemp("root")
    for seed, experiment in enumerate(("synth-a", "synth-b")):
        write_synthetic_experiment(root, experiment, n_runs=8, n_checkpoints=60, seed=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analysis.fit_experiment(root, experiment, max_states=3, restarts=1, workers=1)
    return root


def png_size(path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails unless the file is a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


def test_screenshots_writes_the_four_pictures(fitted_root, tmp_path, capsys):
    out = tmp_path / "pictures"
    assert cli_main(["screenshots", "--root", str(fitted_root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted(screenshots.PICTURES)
    for name in screenshots.PICTURES:
        path = out / name
        assert f"wrote {path}" in printed
        width, height = png_size(path)
        # a whole page at the window's width, or the strip's plot within it
        assert 600 <= width <= screenshots.WIDTH and height >= 300, (name, width, height)
        assert path.stat().st_size > 20_000, name  # drawn content, not a blank page
    assert "4 screenshots in" in printed


def test_screenshots_without_selenium_is_one_line(fitted_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "selenium", None)  # import selenium raises ImportError
    code = cli_main(["screenshots", "--root", str(fitted_root), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "needs selenium" in err and "pip install" in err
    assert not (tmp_path / "x").exists()


def test_screenshots_of_an_unfitted_experiment_names_the_fitted_ones(fitted_root, capsys):
    code = cli_main(["screenshots", "--root", str(fitted_root), "--experiments", "nope"])
    assert code == 2
    assert "no saved fit for nope; fitted: synth-a, synth-b" in capsys.readouterr().err
