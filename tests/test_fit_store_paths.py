"""The fit store's paths.npz (STORE_VERSION 3) and the RunArrays the maps hold.

A fit keeps every map's decoded paths and the epochs in one npz of concatenated
integer arrays, read with ``allow_pickle=False``; fits saved in the version-2
layout (paths as JSON lists in fit.json) still load; a damaged, absent or
linked paths.npz means "no fit", never a crash.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import warnings

import numpy as np
import pytest

from trainmap.analysis import api, predict, store
from trainmap.analysis.result import RunArrays, aligned_paths
from trainmap.analysis.synthetic import write_synthetic_experiment

FIT = dict(max_states=3, restarts=1, workers=1, bootstrap=0)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """(root, result) of a small fitted experiment; tests work on copies of the root."""
    root = tmp_path_factory.mktemp("runs")
    write_synthetic_experiment(root, "exp", n_runs=8, n_checkpoints=60, seed=2, n_states=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # whatever a small experiment warns about
        result = api.fit_experiment(root, "exp", **FIT)
    assert len(result.maps) >= 2, "the tests need maps for more than one n"
    return root, result


@pytest.fixture
def copy(fitted, tmp_path):
    """(root, result, fit folder) of a copy of the fitted experiment."""
    root, result = fitted
    shutil.copytree(root / "exp", tmp_path / "exp")
    return tmp_path, result, store.fits_dir(tmp_path, "exp") / result.fingerprint


def npz_arrays(folder) -> dict:
    with np.load(folder / store.PATHS_FILE, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def write_npz(folder, arrays: dict) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    (folder / store.PATHS_FILE).write_bytes(buffer.getvalue())


# ------------------------------------------------------------------ RunArrays


def test_run_arrays_are_read_only_views_into_one_array():
    runs = RunArrays.from_mapping({"b": [2, 0, 1], "a": [], "c": [1]})
    assert list(runs) == ["b", "a", "c"] and len(runs) == 3 and "a" in runs and "z" not in runs
    assert (
        runs["b"].tolist() == [2, 0, 1] and runs["a"].tolist() == [] and runs["c"].tolist() == [1]
    )
    assert runs.lengths().tolist() == [3, 0, 1] and runs.flat.tolist() == [2, 0, 1, 1]
    assert np.shares_memory(runs["b"], runs.flat)
    with pytest.raises(ValueError):
        runs["b"][0] = 5
    # Equal to a dict of lists with the same content, in any order and dtype.
    assert runs == {"a": [], "c": [1], "b": [2, 0, 1]}
    assert runs == RunArrays(["b", "a", "c"], np.array([2, 0, 1, 1], np.int8), [0, 3, 3, 4])
    assert runs != {"a": [], "c": [2], "b": [2, 0, 1]} and runs != {"b": [2, 0, 1]}
    assert RunArrays.from_mapping(runs) is runs
    # A Mapping like any other: keys, values and items in the runs' order.
    assert [p.tolist() for p in runs.values()] == [[2, 0, 1], [], [1]]
    assert [r for r, _ in runs.items()] == list(runs.keys()) == ["b", "a", "c"]
    assert runs.to_lists() == {"b": [2, 0, 1], "a": [], "c": [1]}


@pytest.mark.parametrize(
    "names, values, offsets",
    [
        (["a", "b"], [1, 2, 3], [0, 1]),  # one offset short
        (["a", "b"], [1, 2, 3], [0, 2, 2]),  # does not end at len(values)
        (["a", "b"], [1, 2, 3], [0, 2, 1, 3][1:]),  # does not start at 0
        (["a", "b"], [1, 2, 3], [0, 3, 2]),  # decreasing
        (["a", "a"], [1, 2, 3], [0, 1, 3]),  # a repeated name
        (["a"], [1.5, 2.0], [0, 2]),  # not integers
    ],
)
def test_run_arrays_refuse_an_inconsistent_layout(names, values, offsets):
    with pytest.raises(ValueError):
        RunArrays(names, np.asarray(values), np.asarray(offsets))


def test_aligned_paths_pack_plain_maps_in_the_paths_order():
    tmap = type("Map", (), {})()
    tmap.paths = {"b": [1, 1], "a": [0]}
    tmap.epochs = {"a": [5], "b": [1, 2]}
    paths, epochs = aligned_paths(tmap)
    assert paths.names == epochs.names == ["b", "a"]
    assert paths.flat.tolist() == [1, 1, 0] and epochs.flat.tolist() == [1, 2, 5]
    tmap.epochs = {"a": [5, 6], "b": [1, 2]}
    with pytest.raises(ValueError, match="differ in length"):
        aligned_paths(tmap)


# ------------------------------------------------------------------ the format


def test_paths_saved_once_as_small_integer_arrays_and_loaded_as_views(copy):
    root, result, folder = copy
    arrays = npz_arrays(folder)
    ns = sorted(result.maps)
    # The epochs once for every n (they do not depend on n), one path array per n.
    assert sorted(arrays) == sorted(["runs", "offsets", "epochs"] + [f"n{n}_paths" for n in ns])
    assert arrays["runs"].tolist() == list(result.maps[ns[0]].paths)
    assert all(arrays[f"n{n}_paths"].dtype == np.int8 for n in ns)
    assert arrays["epochs"].dtype == np.int32  # never int16: epoch arithmetic would wrap
    payload = json.loads((folder / store.FIT_FILE).read_text())
    assert payload["store_version"] == store.STORE_VERSION == 3

    loaded = api.load_fit(root, "exp", **FIT)
    assert loaded is not None and loaded.loaded
    for n in ns:
        fresh, back = result.maps[n], loaded.maps[n]
        assert isinstance(back.paths, RunArrays) and isinstance(back.epochs, RunArrays)
        assert back.paths == fresh.paths and back.epochs == fresh.epochs
        assert back.to_dict() == fresh.to_dict()
        assert not back.paths.flat.flags.writeable
    # Every map shares one epochs object.
    assert len({id(loaded.maps[n].epochs) for n in ns}) == 1
    # Predictions read the same saved paths.
    reference = predict.load_reference(root, "exp")
    n = reference.n
    run = reference.runs[0]
    assert reference.paths[run].tolist() == result.maps[n].paths[run].tolist()


def test_maps_with_other_runs_or_epochs_keep_their_own_layout(copy):
    root, result, _ = copy
    ns = sorted(result.maps)
    last = result.maps[ns[-1]]
    kept = list(last.paths)[1:]  # one run fewer, and the epochs shifted
    other = dataclasses.replace(
        last,
        paths=RunArrays.from_mapping({r: last.paths[r] for r in kept}),
        epochs=RunArrays.from_mapping({r: np.asarray(last.epochs[r]) + 1 for r in kept}),
    )
    changed = dataclasses.replace(result, fingerprint="other", maps={**result.maps, ns[-1]: other})
    folder = store.save_fit(root, "exp", changed, {}, {})
    arrays = npz_arrays(folder)
    assert {f"n{ns[-1]}_runs", f"n{ns[-1]}_offsets", f"n{ns[-1]}_epochs"} <= set(arrays)
    loaded, _ = store.find_fit(root, "exp", "other")
    assert loaded.maps[ns[-1]].paths == other.paths
    assert loaded.maps[ns[-1]].epochs == other.epochs
    assert loaded.maps[ns[0]].epochs == result.maps[ns[0]].epochs


def to_version_2(folder, result) -> None:
    """Rewrite a saved fit in the version-2 layout: paths and epochs as JSON lists."""
    payload = json.loads((folder / store.FIT_FILE).read_text())
    payload["store_version"] = 2
    for n, tmap in result.maps.items():
        payload["maps"][str(n)] = {
            **payload["maps"][str(n)],
            "paths": RunArrays.from_mapping(tmap.paths).to_lists(),
            "epochs": RunArrays.from_mapping(tmap.epochs).to_lists(),
        }
    (folder / store.FIT_FILE).write_text(json.dumps(payload))
    (folder / store.PATHS_FILE).unlink()


def test_a_fit_saved_in_the_version_2_layout_still_loads(copy):
    root, result, folder = copy
    to_version_2(folder, result)
    for loaded in (api.load_fit(root, "exp", **FIT), api.latest_fit(root, "exp")):
        assert loaded is not None and loaded.fingerprint == result.fingerprint
        for n, tmap in result.maps.items():
            assert isinstance(loaded.maps[n].paths, RunArrays)
            assert loaded.maps[n].to_dict() == tmap.to_dict()
    assert [f["key"] for f in api.list_fits(root, "exp")] == [result.fingerprint]
    assert predict.load_reference(root, "exp").runs == list(result.map().paths)
    # A newer version (or an unknown one) is not guessed at.
    payload = json.loads((folder / store.FIT_FILE).read_text())
    (folder / store.FIT_FILE).write_text(json.dumps({**payload, "store_version": 99}))
    assert api.latest_fit(root, "exp") is None


def damage_absent(folder, arrays):
    (folder / store.PATHS_FILE).unlink()


def damage_garbage(folder, arrays):
    (folder / store.PATHS_FILE).write_bytes(b"PK\x03\x04 not a zip at all")


def damage_truncated(folder, arrays):
    data = (folder / store.PATHS_FILE).read_bytes()
    (folder / store.PATHS_FILE).write_bytes(data[: len(data) // 2])


def damage_pickled_names(folder, arrays):
    # an object array can only be read by unpickling it: refused
    write_npz(folder, {**arrays, "runs": np.array(list(arrays["runs"]), dtype=object)})


def damage_offsets(folder, arrays):
    write_npz(folder, {**arrays, "offsets": arrays["offsets"][::-1]})


def damage_state_out_of_range(folder, arrays):
    key = max(k for k in arrays if k.endswith("_paths"))
    bad = arrays[key].copy()
    bad[0] = 99
    write_npz(folder, {**arrays, key: bad})


def damage_missing_n(folder, arrays):
    key = max(k for k in arrays if k.endswith("_paths"))
    write_npz(folder, {k: v for k, v in arrays.items() if k != key})


def damage_numeric_names(folder, arrays):
    write_npz(folder, {**arrays, "runs": np.arange(len(arrays["runs"]))})


@pytest.mark.parametrize(
    "damage",
    [
        damage_absent,
        damage_garbage,
        damage_truncated,
        damage_pickled_names,
        damage_offsets,
        damage_state_out_of_range,
        damage_missing_n,
        damage_numeric_names,
    ],
)
def test_a_damaged_or_absent_paths_file_means_no_fit(copy, damage):
    root, result, folder = copy
    damage(folder, npz_arrays(folder))
    assert store.find_fit(root, "exp", result.fingerprint) is None
    assert api.load_fit(root, "exp", **FIT) is None
    assert api.latest_fit(root, "exp") is None
    with pytest.raises(predict.PredictError, match="unreadable"):
        predict.load_reference(root, "exp")


def test_a_linked_paths_file_is_not_read(copy, tmp_path_factory):
    root, result, folder = copy
    elsewhere = tmp_path_factory.mktemp("elsewhere") / store.PATHS_FILE
    shutil.copyfile(folder / store.PATHS_FILE, elsewhere)  # valid content, reached by a link
    os.unlink(folder / store.PATHS_FILE)
    os.symlink(elsewhere, folder / store.PATHS_FILE)
    assert store.find_fit(root, "exp", result.fingerprint) is None
    assert api.latest_fit(root, "exp") is None
