"""Named phases and readable features: captions, the glossary, state names and their store."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from test_app_support import EXPERIMENT, make_root

from trainmap.analysis import captions, glossary, store
from trainmap.analysis.result import StateInfo, TrainingMap
from trainmap.trainer.columns import SCALAR_COLUMNS, WEIGHT_COLUMNS

ROOT = Path(__file__).resolve().parent.parent


def two_state_map() -> TrainingMap:
    """Run a: S0 at epochs 1-4, S1 at 5-10; run b: S0 at 1-6, S1 at 7-10."""
    paths = {"a": [0] * 4 + [1] * 6, "b": [0] * 6 + [1] * 4}
    epochs = {r: list(range(1, 11)) for r in paths}
    states = [
        StateInfo(0, 0.5, 0.9, 2, 0, False, 2, 3.0, profile={"l2": -1.0, "var_w": 0.5, "l1": 0.1}),
        StateInfo(1, 0.5, 1.0, 0, 2, False, 2, 7.5, profile={"l2": 1.0, "var_w": -0.5, "l1": 0.0}),
    ]
    return TrainingMap(2, states, [], paths, epochs, {"a": 5, "b": None}, {}, 0.1)


def test_caption_names_epoch_range_and_distinctive_features_with_arrows():
    tmap = two_state_map()
    # S0's epochs: 1-4 and 1-6 -> 10th..90th percentile = 1..5; l2 differs by -2, var_w by +1,
    # l1 by 0.1 (below MIN_CONTRAST, so left out).
    assert captions.epoch_range(tmap, 0) == (1, 5)
    assert captions.distinctive_features(tmap, 0) == [("l2", -2.0), ("var_w", 1.0)]
    assert captions.state_caption(tmap, 0) == "epochs 1–5 · L2 ↓, weight variance ↑"
    assert captions.state_caption(tmap, 1) == "epochs 6–10 · L2 ↑, weight variance ↓"


def test_caption_of_a_single_or_unvisited_state():
    tmap = two_state_map()
    tmap.paths = {"a": [0] * 10, "b": [0] * 10}
    assert captions.state_caption(tmap, 1) == "not visited by any run"
    tmap.states = tmap.states[:1]
    assert captions.state_caption(tmap, 0) == "epochs 2–9"  # 10th-90th pct; no contrast


def test_labels_keep_the_id_and_add_the_name():
    labels = captions.state_labels(two_state_map(), {1: "generalising"})
    assert labels[1]["label"] == "S1 generalising" and labels[1]["name"] == "generalising"
    assert labels[0] == {"name": "", "caption": labels[0]["caption"], "label": "S0"}


@pytest.mark.parametrize(
    "bad", ["x" * 41, "a\nb", "tab\there", "bell\x07", "rtl\u202eoverride", None, 3]
)
def test_bad_state_names_are_refused(bad):
    with pytest.raises(captions.StateNameError):
        captions.clean_state_name(bad)


def test_good_state_names_are_stripped():
    assert captions.clean_state_name("  mémorisation ↑ 1 ") == "mémorisation ↑ 1"
    assert captions.clean_state_name("x" * 40) == "x" * 40
    assert captions.clean_state_name("   ") == ""


def test_glossary_covers_every_column_the_trainer_writes():
    # trainer.columns holds the registry's names (tests/test_metrics.py checks that)
    columns = WEIGHT_COLUMNS + SCALAR_COLUMNS
    assert set(columns) == set(glossary.ENTRIES)
    for column in columns:
        entry = glossary.describe(column)
        assert entry.name and entry.short and entry.definition
        assert "not in the glossary" not in entry.definition
        hooked = glossary.describe(f"blocks.0.mlp/{column}")
        assert "blocks.0.mlp" in hooked.name and hooked.definition.startswith(entry.definition)
    assert glossary.describe("eval_acc").unit == "fraction"
    assert "not in the glossary" in glossary.describe("my_own_scalar").definition
    assert {"z", "convergence epoch"} <= set(glossary.TERMS)


def test_glossary_groups_model_level_first():
    columns = ["a/l2", "l2", "b/l1", "a/l1", "eval_acc"]
    assert glossary.grouped(columns) == [
        ("", ["l2", "eval_acc"]),
        ("a", ["a/l2", "a/l1"]),
        ("b", ["b/l1"]),
    ]


def test_glossary_command_prints_terms_and_metrics():
    out = subprocess.run(
        [sys.executable, "-m", "trainmap.trainer.cli", "glossary", "l2", "h/var_sv"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    assert "convergence epoch:" in out and "z:" in out
    assert "L2 (Frobenius) norm" in out and "singular value variance, h" in out


def test_analysis_modules_import_no_torch():
    code = "import sys, trainmap.analysis.captions, trainmap.analysis.glossary; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from trainmap import analysis

    root = tmp_path_factory.mktemp("names")
    make_root(root, n_runs=6, n_checkpoints=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = analysis.fit_experiment(root, EXPERIMENT, max_states=3, restarts=1)
    return root, result


def test_state_names_round_trip_through_the_store(fitted):
    from trainmap import analysis

    root, result = fitted
    key, n = result.fingerprint, result.selected_n
    assert analysis.state_names(root, EXPERIMENT, key, n) == {}
    assert analysis.rename_state(root, EXPERIMENT, key, n, 0, "  early  ") == "early"
    assert analysis.state_names(root, EXPERIMENT, key, n) == {0: "early"}
    assert analysis.state_names(root, EXPERIMENT, key, 1 if n != 1 else 2) == {}
    names_file = store.fits_dir(root, EXPERIMENT) / key / store.NAMES_FILE
    assert names_file.read_text() == f'{{"{n}": {{"0": "early"}}}}'  # plain JSON
    analysis.rename_state(root, EXPERIMENT, key, n, 0, "")  # removing a name
    assert analysis.state_names(root, EXPERIMENT, key, n) == {}
    # A refit to the same key keeps the names.
    analysis.rename_state(root, EXPERIMENT, key, n, 0, "early")
    store.save_fit(root, EXPERIMENT, result, {}, {})
    assert analysis.state_names(root, EXPERIMENT, key, n) == {0: "early"}


def test_renaming_checks_the_fit_n_state_and_name(fitted):
    from trainmap import analysis

    root, result = fitted
    key, n = result.fingerprint, result.selected_n
    for args, message in (
        (("nokey", n, 0, "x"), "no saved fit"),
        ((key, 99, 0, "x"), "no 99-state map"),
        ((key, n, n, "x"), "has states"),
        ((key, n, 0, "a\nb"), "control characters"),
    ):
        with pytest.raises(captions.StateNameError, match=message):
            analysis.rename_state(root, EXPERIMENT, *args)


def test_a_broken_names_file_reads_as_no_names(fitted):
    root, result = fitted
    path = store.fits_dir(root, EXPERIMENT) / result.fingerprint / store.NAMES_FILE
    saved = path.read_text() if path.exists() else None
    try:
        for text in ("{not json", "[1, 2]", '{"x": {"0": "a"}, "2": {"0": 5, "y": "b"}}'):
            path.write_text(text)
            assert store.read_state_names(root, EXPERIMENT, result.fingerprint) in ({}, {2: {}})
    finally:
        if saved is None:
            path.unlink()
        else:
            path.write_text(saved)


def test_fit_output_shows_captions(fitted):
    from trainmap.analysis.cli import format_map

    root, result = fitted
    tmap = result.map()
    text = format_map(tmap, names={0: "early"})
    assert "'early': epoch" in text
    assert np.all([captions.state_caption(tmap, s.state) in text for s in tmap.states])
