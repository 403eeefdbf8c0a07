"""Comparing experiments (analysis.compare and ``trainmap compare``).

Two synthetic experiments are generated from the same states (same seed): A
forks, half its runs taking a detour through an extra state, B never does.
Each is fitted on its own, so the comparison has to match states across two
independent fits; the truth (the generating state of every checkpoint) says
which match is right.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import warnings
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats

from trainmap.analysis import api
from trainmap.analysis.compare import (
    SCALE_POOLED,
    SCALE_Z,
    CompareError,
    compare_experiments,
    compare_fits,
    convergence_tests,
    load_for_compare,
    match_states,
    weighted_logrank,
)
from trainmap.analysis.evidence import logrank_test
from trainmap.analysis.synthetic import write_synthetic_experiment
from trainmap.trainer.cli import main as trainmap

SEED = 0
print(f"compare tests: synthetic seed {SEED}")
FIT = dict(max_states=5, restarts=2, workers=1, bootstrap=0)  # B has no bootstrap
MAIN_ONLY = [[0, 1, 3]]  # B: the main branch of the 4-state default graph, no detour


def write_without_detour(root, name, n_runs, n_checkpoints, **kwargs):
    """Runs of the main branch only, with other noise than A's runs of the same index.

    A run's data depend on the seed and its index only, so writing twice as
    many runs and dropping the first half gives runs A never had.
    """
    truth = write_synthetic_experiment(
        root, name, n_runs=2 * n_runs, n_checkpoints=n_checkpoints, seed=SEED,
        branches=MAIN_ONLY, **kwargs,
    )  # fmt: skip
    for run in truth.run_names[:n_runs]:
        shutil.rmtree(root / name / run)
    return {r: p for r, p in zip(truth.run_names[n_runs:], truth.paths[n_runs:])}


@pytest.fixture(scope="module")
def experiments(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    a = write_synthetic_experiment(root, "A", n_runs=12, n_checkpoints=150, seed=SEED)
    truth = {"A": dict(zip(a.run_names, a.paths))}
    truth["B"] = write_without_detour(root, "B", 12, 150)
    truth["nobias"] = write_without_detour(root, "nobias", 8, 100, biases=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in truth:
            api.fit_experiment(root, name, **FIT)
    return root, truth


def true_state(fit, truth, state):
    """The generating state most of the checkpoints decoded as ``state`` come from."""
    votes = Counter()
    for run, path in fit.map().paths.items():
        path = np.asarray(path)
        votes.update(truth[run][path == state].tolist())
    return votes.most_common(1)[0][0]


# ----------------------------------------------------------------- analysis


def test_states_matched_across_separate_fits_and_the_detour_is_only_in_one(experiments):
    root, truth = experiments
    c = compare_experiments([(root, "A"), (root, "B")])
    fits = {e["name"]: load_for_compare(root, e["name"]).fit for e in c.experiments}
    assert c.scale == SCALE_POOLED and len(c.features) == 14 and not c.warnings

    # Every pair matched is the same generating state; every B state has a partner.
    matched = [g for g in c.groups if g["matched"]]
    assert len(matched) == fits["B"].selected_n
    for g in matched:
        a, b = g["states"]["A"], g["states"]["B"]
        assert true_state(fits["A"], truth["A"], a) == true_state(fits["B"], truth["B"], b)
        assert g["distance"] <= c.threshold
    assert c.quality["matched_pairs"] == len(matched)
    assert c.quality["max_distance"] == pytest.approx(max(g["distance"] for g in matched))

    # A's detour state (generating state 2) exists in A only, farther than the threshold.
    a_side = c.experiments[0]
    detours = [s for s in a_side["states"] if s["is_detour"]]
    assert [true_state(fits["A"], truth["A"], s["state"]) for s in detours] == [2]
    alone = c.group_of("A", detours[0]["state"])
    assert not alone["matched"] and alone["states"]["B"] is None
    assert alone["nearest"]["B"] > c.threshold
    assert detours[0]["detour"]["delay"] > 0 and detours[0]["detour"]["verdict"] == "detour"
    assert not any(s["is_detour"] for s in c.experiments[1]["states"])

    # The transitions into and out of the detour are A's only, because B lacks the state.
    only_a = [t for t in c.transitions if alone["label"] in (t["source"], t["target"])]
    assert len(only_a) == 2
    for t in only_a:
        assert list(t["present"]) == ["A"] and t["present"]["A"] == detours[0]["visited_runs"]
        assert t["absent"]["B"] == f"{alone['label']} not in B"

    # Convergence: one test, B against A, censored runs counted; words carry the evidence.
    (test,) = c.convergence
    assert (test["a"], test["b"], test["n_a"], test["n_b"]) == ("A", "B", 12, 12)
    assert test["p_value"] is not None and test["p_adjusted"] == test["p_value"]
    assert test["median_b"] - test["median_a"] == test["difference"]
    assert "Gehan-Wilcoxon p" in test["message"] and "interval" in test["message"]
    assert a_side["dissimilarity"] > c.experiments[1]["dissimilarity"]
    json.dumps(c.to_dict())  # plain data


def test_different_features_match_on_the_shared_ones(experiments):
    root, truth = experiments
    c = compare_experiments([(root, "A"), (root, "nobias")])
    assert len(c.features) == 11 and "mean_b" not in c.features
    assert c.experiments[0]["missing_features"] == ["mean_b", "median_b", "var_b"]
    assert any("mean_b, median_b, var_b" in w for w in c.warnings)
    fits = {e["name"]: load_for_compare(root, e["name"]).fit for e in c.experiments}
    for g in (g for g in c.groups if g["matched"]):
        a, b = g["states"]["A"], g["states"]["nobias"]
        assert true_state(fits["A"], truth["A"], a) == true_state(
            fits["nobias"], truth["nobias"], b
        )


def test_three_experiments_each_against_the_first(experiments):
    root, _ = experiments
    c = compare_experiments([(root, "A"), (root, "B"), (root, "nobias")])
    assert [t["b"] for t in c.convergence] == ["B", "nobias"]
    tested = [t for t in c.convergence if t["p_value"] is not None]
    assert all(t["p_adjusted"] >= t["p_value"] for t in tested)  # Holm over two tests
    names = ["A", "B", "nobias"]
    for name in names:  # every state of every experiment is in exactly one group
        states = [g["states"][name] for g in c.groups if g["states"][name] is not None]
        assert sorted(states) == list(range(c.experiments[names.index(name)]["n_states"]))


def test_no_shared_feature_and_per_run_scaling(experiments):
    root, _ = experiments
    a, b = load_for_compare(root, "A"), load_for_compare(root, "B")
    renamed = dataclasses.replace(
        b, fit=dataclasses.replace(b.fit, feature_names=[f"x{i}" for i in range(14)])
    )
    with pytest.raises(CompareError, match="share no feature column"):
        compare_fits([a, renamed])
    # Without a common scale (a fit z-scored per run) the match falls back to z units, said so.
    per_run = dataclasses.replace(b, center=None, scale=None, name="B-per-run")
    c = compare_fits([a, per_run])
    assert c.scale == SCALE_Z and c.quality["unit"] == "z"
    assert any("z-scored per run" in w and "B-per-run" in w for w in c.warnings)
    # Asked for: shapes in each experiment's own z units; the same states still pair up.
    shapes = compare_fits([a, b], match_on="shapes")
    assert shapes.scale == SCALE_Z and any("matched on shapes" in w for w in shapes.warnings)
    levels = compare_fits([a, b])
    pairs = {tuple(g["states"].values()) for g in levels.groups if g["matched"]}
    assert pairs == {tuple(g["states"].values()) for g in shapes.groups if g["matched"]}
    # B's weights far larger throughout: nothing matches on levels, the way out is named,
    # and on shapes the same states pair up again.
    shifted = dataclasses.replace(b, center=b.center + 100 * b.scale)
    apart = compare_fits([a, shifted], match_on="levels")
    assert apart.quality["matched_pairs"] == 0 and apart.quality["mean_distance"] is None
    assert any("--match-on shapes" in w for w in apart.warnings)
    again = compare_fits([a, shifted])  # auto: shapes, since nothing matches on levels
    assert again.match_on == "shapes" and again.scale == SCALE_Z
    assert any("no state matched on the common scale" in w for w in again.warnings)
    assert pairs == {tuple(g["states"].values()) for g in again.groups if g["matched"]}
    assert levels.match_on == "levels"  # auto keeps levels when states match there
    with pytest.raises(CompareError, match="match_on"):
        compare_fits([a, b], match_on="colour")


def test_bootstrap_of_n_is_carried_when_the_fit_has_one(experiments):
    from trainmap.analysis.compare_cli import format_comparison
    from trainmap.app import compare_figures

    root, _ = experiments
    a, b = load_for_compare(root, "A"), load_for_compare(root, "B")
    # FitResult.bootstrap (analysis.bootstrap) holds the selected n per resample of runs.
    a.fit.bootstrap = {"selected_n_counts": {"3": 30, str(a.n): 70}, "n_resamples": 100}
    c = compare_fits([a, b])
    assert c.experiments[0]["n_bootstrap"] == {3: 30, a.n: 70}
    assert c.experiments[0]["n_resamples"] == 100 and c.experiments[1]["n_bootstrap"] == {}
    assert f"n={a.n}: 70" in format_comparison(c)
    words = compare_figures.experiment_rows(c.to_dict())[0]["states"]
    assert "100 resamples" in words and "this n in 70%" in words


def test_missing_fit_gives_the_command(experiments, tmp_path):
    root, _ = experiments
    write_synthetic_experiment(tmp_path, "unfitted", n_runs=3, n_checkpoints=30, seed=1)
    with pytest.raises(CompareError) as error:
        compare_experiments([(root, "A"), (tmp_path, "unfitted")])
    assert f"trainmap fit {tmp_path / 'unfitted'}" in str(error.value)
    with pytest.raises(CompareError, match="at least two"):
        compare_experiments([(root, "A")])
    with pytest.raises(CompareError, match="listed twice"):
        compare_experiments([(root, "A"), (root, "A")])
    with pytest.raises(CompareError, match="2 values of n for 3"):
        compare_experiments([(root, "A"), (root, "B"), (root, "nobias")], n_states=[3, 3])
    with pytest.raises(CompareError, match="feasible"):
        compare_experiments([(root, "A"), (root, "B")], n_states=[9, None])


def _fake_map(convergence: dict, last_epoch: int = 200):
    runs = sorted(convergence)
    return SimpleNamespace(
        paths={r: [0] for r in runs},
        epochs={r: [0, last_epoch] for r in runs},
        convergence_epoch=convergence,
    )


def test_convergence_test_keeps_censored_runs():
    fast = _fake_map({f"r{i}": 40 + i for i in range(8)})
    # Most slow runs never converge: dropping them would hide exactly the slowness.
    slow = _fake_map({f"r{i}": (90 + i if i < 3 else None) for i in range(8)})
    (test,) = convergence_tests(["fast", "slow"], [fast, slow])
    assert test["verdict"] == "later" and test["censored_b"] == 5 and test["p_value"] < 0.001
    assert test["median_b"] is None and test["difference"] is None  # more than half censored
    assert test["interval"][0] is not None and test["interval"][0] > 0
    assert test["message"].startswith("slow converges later than fast")
    (same,) = convergence_tests(["a", "b"], [fast, _fake_map({f"r{i}": 40 + i for i in range(8)})])
    assert same["verdict"] == "no_difference" and same["difference"] == 0
    few = _fake_map({"r0": 10, "r1": 20, "r2": None})
    (untold,) = convergence_tests(["fast", "few"], [fast, few])
    assert untold["verdict"] == "not_enough_runs" and untold["p_value"] is None
    assert "few has 3 runs, need >= 4" in untold["message"]


def test_match_states_threshold_and_one_state_per_experiment():
    a = np.array([[0.0, 0.0], [2.0, 0.0], [4.0, 0.0]])
    b = np.array([[4.1, 0.0], [0.2, 0.0]])  # near a[2] and a[0]; nothing near a[1]
    groups = match_states([a, b], threshold=0.5)
    assert [g["members"] for g in groups] == [{0: 0, 1: 1}, {0: 1}, {0: 2, 1: 0}]
    assert [g["grade"] for g in groups] == ["same", None, "same"]
    # Beyond the threshold but nearer to each other than to their own neighbours: similar.
    loose = match_states([a, b], threshold=0.05)
    assert [g["members"] for g in loose] == [{0: 0, 1: 1}, {0: 1}, {0: 2, 1: 0}]
    assert [g["grade"] for g in loose] == ["similar", None, "similar"]
    # Far from everything: b's states are nobody's counterpart.
    far = match_states([a, b + 10.0], threshold=0.5)
    assert [g["members"] for g in far] == [{0: 0}, {0: 1}, {0: 2}, {1: 0}, {1: 1}]


def test_gehan_test_against_known_answers():
    rng = np.random.default_rng(SEED)
    times = rng.integers(10, 60, size=20).astype(float)
    events = rng.random(20) < 0.7
    group = np.arange(20) < 9
    assert weighted_logrank(times, events, group, "logrank") == pytest.approx(
        logrank_test(times, events, group)
    )
    # Without censoring Gehan's test is the Wilcoxon rank-sum (Mann-Whitney) test.
    x, y = rng.normal(size=10), rng.normal(0.8, size=12)
    _, p, _ = weighted_logrank(np.r_[x, y], np.ones(22, bool), np.arange(22) < 10)
    mw = stats.mannwhitneyu(x, y, use_continuity=False, method="asymptotic").pvalue
    assert p == pytest.approx(mw, abs=0.01)
    # The LayerNorm example's shape (docs/compare.md): 7 of 8 runs converge in each
    # experiment, all of one before all of the other; one run of each never does.
    slow = [220, 160, 196, 144, 164, 200, 112, 400]
    fast = [33, 27, 27, 33, 300, 33, 27, 30]
    times = np.array(slow + fast, dtype=float)
    events = np.array([True] * 7 + [False] + [True] * 4 + [False] + [True] * 3)
    group = np.arange(16) >= 8
    assert logrank_test(times, events, group)[1] > 0.05  # the log-rank misses it
    chi2, p, u = weighted_logrank(times, events, group)
    assert p < 0.01 and u > 0  # the fast group converges more than expected


# ---------------------------------------------------------------------- CLI


def test_cli_report_and_errors(experiments, capsys, tmp_path):
    root, _ = experiments
    assert trainmap(["compare", str(root / "A"), str(root / "B")]) == 0
    out = capsys.readouterr().out
    assert "matched phases" in out and "only in A" in out
    assert "detour S" in out and "convergence:" in out and "Gehan-Wilcoxon p" in out
    assert "transitions in some experiments but not others" in out

    write_synthetic_experiment(tmp_path, "unfitted", n_runs=2, n_checkpoints=20, seed=1)
    assert trainmap(["compare", str(root / "A"), str(tmp_path / "unfitted")]) == 2
    err = capsys.readouterr().err
    assert f"trainmap fit {tmp_path / 'unfitted'}" in err
    assert trainmap(["compare", str(root / "A"), str(tmp_path / "nowhere")]) == 2
    assert "not an experiment directory" in capsys.readouterr().err
    assert trainmap(["compare", str(root / "A"), str(root / "B"), "--n-states", "x"]) == 2


def test_compare_imports_no_torch_and_the_cli_imports_cheaply():
    code = "import sys, trainmap.analysis.compare\nassert 'torch' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", code], check=True)
    cheap = "import sys, trainmap.analysis.compare_cli\nassert 'scipy' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", cheap], check=True)


# ------------------------------------------------------- dashboard builders


def test_builders_colour_matched_phases_alike(experiments):
    from trainmap.app import common_figures, compare_figures, map_figures

    root, _ = experiments
    c = compare_experiments([(root, "A"), (root, "B")])
    data = c.to_dict()
    colour_of = {}
    for i, side in enumerate(c.experiments):
        fit = load_for_compare(root, side["name"]).fit
        elements = compare_figures.matched_elements(map_figures.map_elements(fit.map()), data, i)
        nodes = [e for e in elements if "source" not in e["data"]]
        edges = [e for e in elements if "source" in e["data"]]
        assert len(nodes) == side["n_states"] and len(edges) == len(fit.map().edges)
        for node in nodes:
            group = c.group_of(side["name"], node["data"]["state"])
            assert node["data"]["color"] == common_figures.state_color(group["group"])
            assert node["data"]["state_label"] == f"S{node['data']['state']}"
            if group["matched"]:
                assert node["data"]["label"] == group["label"]
                assert node["data"]["match_text"].startswith("The same phase as")
                colour_of.setdefault(group["label"], set()).add(node["data"]["color"])
            else:
                assert node["data"]["label"] == f"{group['label']} (only {side['name']})"
                assert "unmatched" in node["classes"].split()
                assert node["data"]["match_text"].startswith("No counterpart")
        for edge in edges:  # an edge takes its source phase's colour, as on the map page
            source = c.group_of(side["name"], int(edge["data"]["source"][1:]))
            assert edge["data"]["color"] == common_figures.state_color(source["group"])
            assert edge["data"]["source_label"] == source["label"]
    assert colour_of and all(len(colours) == 1 for colours in colour_of.values())

    rows = compare_figures.match_rows(data)
    assert [r["label"] for r in rows] == [g["label"] for g in c.groups]
    assert sum(r["status"] == "only in A" for r in rows) == c.quality["unmatched_states"]
    assert {r["match"] for r in rows} <= {"same", "similar", "only in A", "only in B"}
    assert all(r["distance"].endswith("pooled sd") for r in rows if r["status"] == "matched")
    summary = compare_figures.experiment_rows(data)
    assert [r["experiment"] for r in summary] == ["A", "B"]
    assert "+" in summary[0]["detours"] and "p" in summary[0]["detours"]
    assert summary[1]["detours"] == "none (every run visits every state)"
    items = compare_figures.transition_items(data)
    assert len(items) == len(c.transitions) and all("→" in t for t in items)


def test_convergence_figure_marks_never_converged_runs(experiments):
    from trainmap.app import compare_figures

    root, _ = experiments
    data = compare_experiments([(root, "A"), (root, "B")]).to_dict()
    side = data["experiments"][1]
    never = side["runs"][:3]
    for run in never:  # as if three of B's runs never reached the threshold
        side["convergence"][run] = None
    fig = compare_figures.convergence_figure(data)
    by_name = {t.name: t for t in fig.data}
    censored = by_name["B: never converged (at last epoch)"]
    assert list(censored.customdata) == never
    assert list(censored.x) == [side["last_epoch"][r] for r in never]
    assert censored.marker.symbol == "triangle-right-open"
    assert len(by_name["B: converged"].x) == len(side["runs"]) - 3
    assert "A: never converged (at last epoch)" not in by_name  # A's runs all converged
    assert list(fig.layout.yaxis.ticktext) == ["A", "B"]
    assert "B vs A" in fig.layout.title.text and "Gehan-Wilcoxon p" in fig.layout.title.text
    data["convergence"][0].update(verdict="not_enough_runs")
    assert "not enough runs to tell" in compare_figures.convergence_title(data)


def test_valid_experiments_from_the_url(experiments):
    from trainmap.app import data

    root, _ = experiments
    assert data.valid_experiments(str(root), "B,A,B,../etc, nope") == ["B", "A"]
    assert data.valid_experiments(str(root), ["A", None]) == ["A"]
    assert data.valid_experiments(str(root), None) == []
