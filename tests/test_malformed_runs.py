"""Any malformed run is "broken, with the reason", and the rest is served.

A fixed corpus of nasty run directories, and a property-based fuzzer (hypothesis)
over the content of ``meta.json`` and ``metrics.jsonl``, both sent through the
reader (``trainer.rundir``), the CLI (``trainmap runs list``, ``trainmap fit``) and
the dashboard's data layer (``trainmap.app.data``). Whatever the files hold, nothing
raises but a RunDirError naming the run, a broken run's reason is one of the
reasons the reader knows (never its catch-all for unforeseen failures), and the
good run beside it is served.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainmap.trainer import cli, rundir
from trainmap.trainer.runs_cli import format_listing

GOOD_ROWS = b"".join(
    json.dumps({"epoch": e, "step": 10 * e, "l2": 1.0 + e, "eval_acc": e / 4}).encode() + b"\n"
    for e in range(4)
)
DEEP = b"[" * 100_000 + b"]" * 100_000


def good_meta(run: str, /, **changes) -> dict:
    meta = {
        "format_version": 1,
        "experiment": "exp",
        "run": run,
        "task": "toy",
        "seed": 0,
        "config": {"lr": 0.001},
        "hook_points": ["fc"],
        "versions": {"python": "3"},
        "status": "completed",
        "started_at": "2026-01-01T00:00:00+0000",
        "ended_at": "2026-01-01T00:01:00+0000",
        "last_checkpoint": {"epoch": 3, "step": 30},
        "diverged_at_epoch": None,
        "error": None,
        "writer": {"host": "elsewhere", "pid": 1},
    }
    meta.update(changes)
    return meta


def write_run(exp: Path, run: str, meta: bytes | dict, metrics: bytes = GOOD_ROWS) -> None:
    path = exp / run
    path.mkdir(parents=True)
    if isinstance(meta, dict):
        meta = json.dumps(meta).encode()
    (path / rundir.META_FILE).write_bytes(meta)
    (path / rundir.METRICS_FILE).write_bytes(metrics)


def row(**values) -> bytes:
    return json.dumps({"epoch": 1, "step": 1, **values}).encode() + b"\n"


# name -> (meta, metrics, a word of the reason); reason None: the run is readable
CORPUS = {
    "meta-deep": (DEEP, GOOD_ROWS, "nested too deeply"),
    "meta-deep-field": (
        b'{"format_version": 1, "status": "completed", "x": ' + DEEP + b"}",
        GOOD_ROWS,
        "nested too deeply",
    ),
    "meta-list": (b"[1, 2]", GOOD_ROWS, "JSON object"),
    "meta-binary": (b"\xff\xfe\x00", GOOD_ROWS, "not valid JSON"),
    "meta-empty": (b"", GOOD_ROWS, "not valid JSON"),
    "meta-huge-int": (b'{"format_version": 1' + b"0" * 5000 + b"}", GOOD_ROWS, "JSON"),
    "writer-string": (good_meta("x", status="running", writer="me"), GOOD_ROWS, "writer"),
    "writer-pid-text": (
        good_meta("x", status="running", writer={"host": "h", "pid": "1"}),
        GOOD_ROWS,
        "writer",
    ),
    "task-dict": (good_meta("x", task={"name": "toy"}), GOOD_ROWS, "task"),
    "task-number": (good_meta("x", task=5), GOOD_ROWS, "task"),
    "seed-text": (good_meta("x", seed="0"), GOOD_ROWS, "seed"),
    "seed-huge": (good_meta("x", seed=2**70), GOOD_ROWS, "seed"),
    "config-list": (good_meta("x", config=[1]), GOOD_ROWS, "config"),
    "status-list": (good_meta("x", status=["completed"]), GOOD_ROWS, "status"),
    "version-bool": (good_meta("x", format_version=True), GOOD_ROWS, "format_version"),
    "diverged-text": (good_meta("x", diverged_at_epoch="3"), GOOD_ROWS, "diverged_at_epoch"),
    "started-number": (good_meta("x", started_at=5), GOOD_ROWS, "started_at"),
    "hooks-number": (good_meta("x", hook_points=5), GOOD_ROWS, "hook_points"),
    "checkpoint-number": (good_meta("x", last_checkpoint=5), GOOD_ROWS, "last_checkpoint"),
    "epoch-text": (good_meta("x"), row(epoch="1"), "epoch is '1'"),
    "epoch-null": (good_meta("x"), row(epoch=None), "epoch is None"),
    "epoch-float": (good_meta("x"), row(epoch=1.5), "epoch is 1.5"),
    "epoch-bool": (good_meta("x"), row(epoch=True), "epoch is True"),
    "epoch-int64-overflow": (good_meta("x"), row(epoch=2**63), "int64"),
    "step-huge": (good_meta("x"), row(step=10**30), "int64"),
    "line-list": (good_meta("x"), GOOD_ROWS + b"[1, 2]\n" + GOOD_ROWS, "line 5"),
    "line-empty-object": (good_meta("x"), GOOD_ROWS + b"{}\n" + GOOD_ROWS, "line 5"),
    "line-string": (good_meta("x"), b'"{}"\n', "line 1"),
    "line-deep": (good_meta("x"), b'{"epoch": 1, "step": 1, "x": ' + DEEP + b"}\n", "line 1"),
    "line-binary": (good_meta("x"), b'{"epoch": 1, "step": 1, "\xff": 1}\n', "line 1"),
    "line-deep-middle": (
        good_meta("x"),
        GOOD_ROWS + b'{"epoch": 9, "step": 90, "x": ' + DEEP + b"}\n" + GOOD_ROWS,
        "line 5",
    ),
    "no-metrics": (good_meta("x"), None, "no metrics.jsonl"),
    # readable: odd values are NaN, odd columns kept
    "metric-odd-values": (
        good_meta("x"),
        row(eval_acc={"a": 1}, l2=[1]) + row(epoch=2, step=2, eval_acc=10**400, l2="x"),
        None,
    ),
    "metric-non-finite": (
        good_meta("x"),
        b'{"epoch": 1, "step": 1, "l2": NaN, "x": -Infinity}\n'
        b'{"epoch": 2, "step": 2, "l2": 1e999}\n',
        None,
    ),  # fmt: skip
    "metric-surrogate-name": (good_meta("x"), b'{"epoch": 1, "step": 1, "\\ud800": 1}\n', None),
    "metric-booleans": (good_meta("x"), row(flag=True) + row(epoch=2, step=2, flag=False), None),
    "half-line": (good_meta("x"), GOOD_ROWS + b'{"epoch": 4, "st', None),
}


def write_corpus(exp: Path) -> None:
    for name, (meta, metrics, _) in CORPUS.items():
        if isinstance(meta, dict):
            meta = {**meta, "run": name}
        write_run(exp, name, meta, metrics if metrics is not None else b"")
        if metrics is None:
            (exp / name / rundir.METRICS_FILE).unlink()


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_run(root / "exp", "good", good_meta("good"))
    write_corpus(root / "exp")
    return root


def test_reader_reports_each_nasty_run_as_broken_with_its_reason(corpus_root):
    summaries = {s.run: s for s in rundir.list_runs(corpus_root, "exp")}
    assert set(summaries) == set(CORPUS) | {"good"}
    assert not summaries["good"].broken and summaries["good"].last_eval_acc == 0.75
    runs, broken = rundir.load_experiment(corpus_root, "exp")
    reasons = {b.run: b.reason for b in broken}
    for name, (_, _, word) in CORPUS.items():
        if word is None:
            assert name in {r.name for r in runs}, reasons.get(name)
            continue
        assert name in reasons, f"{name} should be broken"
        assert word in reasons[name] and rundir.UNEXPECTED not in reasons[name], reasons[name]
        with pytest.raises(rundir.RunDirError, match=f"run exp/{name}: "):
            rundir.load_run(corpus_root, "exp", name)
    odd = next(r for r in runs if r.name == "metric-odd-values").metrics
    assert math.isnan(odd["eval_acc"].iloc[0]) and odd["eval_acc"].iloc[1] == math.inf
    assert odd["l2"].isna().all()  # a list and a string
    flags = next(r for r in runs if r.name == "metric-booleans").metrics["flag"]
    assert flags.dtype.kind == "f" and flags.isna().all()


def test_runs_list_shows_every_run_and_its_reason(corpus_root, capsys):
    assert cli.main(["runs", "list", str(corpus_root)]) == 0
    out = capsys.readouterr().out
    # listings parse every line (once, then the columnar cache keeps it): all damage shows
    broken = sum(word is not None for _, _, word in CORPUS.values())
    assert f"exp  ({len(CORPUS) + 1} runs, {broken} broken)" in out
    lines = out.splitlines()
    for name, (_, _, word) in CORPUS.items():
        (listed,) = [line for line in lines[2:] if line.split()[0] == name]
        assert word is None or ("broken" in listed and word in listed), listed
    assert "nested too deeply" in out and "epoch is '1'" in out


def test_fit_excludes_broken_runs_with_their_reasons(tmp_path):
    from trainmap import analysis
    from trainmap.analysis.synthetic import write_synthetic_experiment

    write_synthetic_experiment(tmp_path, "exp", n_runs=5, n_checkpoints=30, seed=1)
    write_corpus(tmp_path / "exp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = analysis.fit_experiment(tmp_path, "exp", max_states=2, restarts=1, workers=1)
    assert len(result.runs) == 5
    for name, (_, _, word) in CORPUS.items():
        if word is not None:
            assert word in result.excluded_runs[name], (name, result.excluded_runs.get(name))


@pytest.fixture(scope="module")
def dash_app(tmp_path_factory):
    from trainmap.app.main import create_app

    root = tmp_path_factory.mktemp("served")
    app = create_app(root, cache_dir=tmp_path_factory.mktemp("cache"))
    return app, root


def serve_experiment(root: Path, experiment: str) -> dict:
    """Everything the dashboard's data layer does with an experiment's runs."""
    from trainmap.app import data

    root = str(root)
    fp = data.fingerprint(root, experiment)
    summaries = {s["run"]: s for s in data.run_summaries(root, experiment, fp)}
    view = data.runs_view(root, experiment, fp)
    metrics = data.metric_names(root, experiment, fp)
    for metric in metrics[:4]:
        data.metric_band(root, experiment, fp, metric)
    for run in summaries:
        if data.valid_run(root, experiment, fp, run):
            for metric in metrics[:2]:
                data.curves_view(root, experiment, fp, metric, run, None, True, False, 3)
        data.prediction_view(root, experiment, fp, run)
    return {"summaries": summaries, "view": view, "metrics": metrics}


def test_dashboard_data_layer_serves_the_rest(dash_app):
    app, root = dash_app
    write_run(root / "corpus", "good", good_meta("good"))
    write_corpus(root / "corpus")
    with app.server.app_context():
        served = serve_experiment(root, "corpus")
    summaries = served["summaries"]
    assert summaries["good"]["status"] == "completed"
    assert summaries["meta-deep"]["status"] == rundir.BROKEN
    assert "nested too deeply" in summaries["meta-deep"]["reason"]
    assert served["view"]["counts"].startswith(f"{len(CORPUS) + 1} runs")
    assert "eval_acc" in served["metrics"]


# ------------------------------------------------------------------ fuzzing

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**62, max_value=2**80)
    | st.floats()
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
META_KEYS = ["format_version", "status", *rundir.META_FIELDS]
META = st.one_of(
    JSON.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(META_KEYS), JSON, max_size=4).map(
        lambda changes: json.dumps(good_meta("fuzz", **changes)).encode()
    ),
    st.binary(max_size=64),
)
INDEX = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), JSON)
ROW = st.fixed_dictionaries(
    {"epoch": INDEX, "step": INDEX}, optional={"eval_acc": JSON, "l2": JSON}
).flatmap(
    lambda fixed: st.dictionaries(st.text(max_size=6), JSON, max_size=3).map(
        lambda extra: {**fixed, **extra}
    )
)
GOOD_ROW = st.builds(
    lambda e, acc: {"epoch": e, "step": e, "eval_acc": acc, "l2": 1.0},
    st.integers(0, 1000),
    st.floats(allow_nan=True),
)
LINE = st.one_of(
    GOOD_ROW.map(lambda r: json.dumps(r).encode()),
    ROW.map(lambda r: json.dumps(r).encode()),
    JSON.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b" ")),
)
METRICS = st.tuples(st.lists(LINE, max_size=6), st.booleans()).map(
    lambda t: b"\n".join(t[0]) + (b"\n" if t[1] else b"")
)
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def check_reader(root: Path, experiment: str) -> None:
    fuzz = rundir.summarize_run(root / experiment / "fuzz", experiment)
    if fuzz.broken:
        assert fuzz.reason and rundir.UNEXPECTED not in fuzz.reason, fuzz.reason
    try:
        run = rundir.load_run(root, experiment, "fuzz")
    except rundir.RunDirError as error:
        assert f"run {experiment}/fuzz: " in str(error) and rundir.UNEXPECTED not in str(error)
    else:
        assert str(run.metrics["epoch"].dtype) == "int64"
        assert all(run.metrics[c].dtype.kind in "iuf" for c in run.metrics.columns[2:])
    runs, broken = rundir.load_experiment(root, experiment)
    assert "good" in {r.name for r in runs}
    assert all(rundir.UNEXPECTED not in b.reason for b in broken)
    listing = format_listing(root, experiment)
    assert sum(line.split()[0] in ("good", "fuzz") for line in listing.splitlines()[2:]) == 2
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert cli.main(["runs", "list", str(root), "--experiment", experiment]) == 0
    assert "fuzz" in out.getvalue()


@FUZZ
@given(meta=META, metrics=METRICS)
def test_fuzzed_runs_never_break_the_reader_or_the_cli(meta, metrics):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_run(root / "exp", "good", good_meta("good"))
        write_run(root / "exp", "fuzz", meta, metrics)
        check_reader(root, "exp")


_experiments = itertools.count()


@settings(FUZZ, max_examples=50)  # each example builds the Runs page's figures: ~0.15 s
@given(meta=META, metrics=METRICS)
def test_fuzzed_runs_never_break_the_dashboard_data_layer(dash_app, meta, metrics):
    app, root = dash_app
    experiment = f"fuzz-{next(_experiments)}"  # a fresh experiment: no cached answer reused
    write_run(root / experiment, "good", good_meta("good"))
    write_run(root / experiment, "fuzz", meta, metrics)
    try:
        with app.server.app_context():
            served = serve_experiment(root, experiment)
        assert served["summaries"]["good"]["status"] == "completed"
        reason = served["summaries"]["fuzz"]["reason"] or ""
        assert rundir.UNEXPECTED not in reason
    finally:
        shutil.rmtree(root / experiment)
