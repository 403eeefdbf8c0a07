"""The CLI never prints a traceback: every mistake is one line and a non-zero exit.

A table of bad invocations across all subcommands (bad numbers, seeds too large
for an int, ``--out`` an existing file or under one, a missing or unwritable
parent, an unknown device, a bad host or a port in use, names that leave the
root, experiments without runs or fits, argparse's own errors). Each must end
with exactly one line on stderr, starting ``trainmap``, and an exit code that is
not 0; none may leave a run directory behind.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import warnings

import pytest

from trainmap.trainer import cli

TOO_BIG = str(2**70)

# (arguments, a word of the message); {tmp} is an empty scratch folder, {file} a
# regular file, {exp} a fitted experiment, {bare} an experiment without a fit,
# {empty} an experiment folder with no runs, {busy} a port in use.
CASES = [
    # --- trainmap (no or unknown subcommand, argparse errors)
    (["nosuch"], "invalid choice"),
    (["train", "--epochs", "abc", "--out", "{tmp}/e"], "invalid int value"),
    (["runs"], "required"),
    # --- train
    (["train", "--seeds", TOO_BIG, "--out", "{tmp}/e"], "seed"),
    (["train", "--seeds", f"0-{TOO_BIG}", "--out", "{tmp}/e"], "seed"),
    (["train", "--seeds", "5-2", "--out", "{tmp}/e"], "seeds"),
    (["train", "--seeds", "-1", "--out", "{tmp}/e"], "seeds"),
    (["train", "--epochs", TOO_BIG, "--out", "{tmp}/e"], "--epochs"),
    (["train", "--out", "{file}"], "not a directory"),
    (["train", "--out", "{file}/e"], "not a directory"),
    (["train", "--out", "/proc/nonexistent/e"], "cannot create"),
    (["train", "--out", "{tmp}/.hidden"], "invalid experiment"),
    (["train", "--out", "{tmp}/e", "--device", "quantum"], "device"),
    (["train", "--out", "{tmp}/e", "--device", "cuda:x"], "device"),
    (["train", "--out", "{tmp}/e", "--workers", "0"], "workers"),
    (["train", "--out", "{tmp}/e", "--batch-size", "-1"], "unrecognized"),
    (["train", "--out", "{tmp}/e", "--preset", "huge"], "unknown preset"),
    # --- fit
    (["fit", "{tmp}/missing"], "not an experiment directory"),
    (["fit", "{file}"], "not an experiment directory"),
    (["fit", "{empty}"], "no usable runs"),
    (["fit", "{bare}", "--max-states", "0"], "max_states"),
    (["fit", "{bare}", "--restarts", "0"], "restarts"),
    (["fit", "{bare}", "--first-n", "1"], "first_n"),
    (["fit", "{bare}", "--features", "nope"], "nope"),
    (["fit", "{bare}", "--workers", "0"], "workers"),
    (["fit", "{bare}", "--seed", TOO_BIG], "seed"),
    (["fit", "{bare}", "--seed", "-1"], "seed"),
    (["fit", "{bare}", "--threshold", "nan"], "threshold"),
    (["fit", "{bare}", "--backend", "dask"], "scheduler"),
    # --- compare
    (["compare", "{exp}"], "two"),
    (["compare", "{exp}", "{tmp}/missing"], "not an experiment directory"),
    (["compare", "{exp}", "{bare}"], "fit"),
    (["compare", "{exp}", "{exp}", "--n-states", "a,b"], "--n-states"),
    (["compare", "{exp}", "{exp}", "--match-threshold", "-1"], "threshold"),
    # --- predict
    (["predict", "{tmp}/missing/run"], "not a run directory"),
    (["predict", "{bare}/seed-0"], "fit"),
    (["predict", "{exp}/seed-0", "--upto", "0"], "upto"),
    (["predict", "{exp}/seed-0", "--n", "99"], "99"),
    # --- glossary
    (["glossary", "--nope"], "unrecognized arguments"),
    # --- serve
    (["serve"], "no root"),
    (["serve", "--root", "{file}"], "not a directory"),
    (["serve", "--root", "{tmp}", "--port", "99999"], "port"),
    (["serve", "--root", "{tmp}", "--host", "no such host!"], "host"),
    (["serve", "--root", "{tmp}", "--host", "127.0.0.1", "--port", "{busy}"], "in use"),
    # --- demo
    (["demo", "--root", "{file}/r", "--no-serve"], "not a directory"),
    (["demo", "--root", "{tmp}/r", "--seeds", "x", "--no-serve"], "seeds"),
    (["demo", "--root", "{tmp}/r", "--task", "nope", "--no-serve"], "unknown task"),
    (["demo", "--root", "{tmp}/r", "--workers", "0", "--no-serve"], "workers"),
    (["demo", "--root", "{tmp}/r", "--live-pace", "-1", "--no-serve"], "live-pace"),
    # --- screenshots
    (["screenshots", "--root", "{tmp}/none", "--out", "{tmp}/o"], "not a directory"),
    (["screenshots", "--root", "{tmp}", "--experiments", "x", "--out", "{tmp}/o"], "no saved fit"),
    (["demo", "--root", "{tmp}/r", "--port", "0"], "port"),
    (["demo", "--root", "{tmp}/r", "--host", "no such host!"], "host"),
    # --- runs
    (["runs", "list", "{tmp}/missing"], "not a directory"),
    (["runs", "list", "{file}"], "not a directory"),
    (["runs", "list", "{tmp}", "--experiment", "../x"], "invalid"),
    (["runs", "list", "{tmp}", "--experiment", "missing"], "missing"),
    # --- reproduce (checked before hours of training)
    (["reproduce", "--root", "{tmp}/r", "--out", "{file}/report.md"], "not a directory"),
    (["reproduce", "--root", "{tmp}/r", "--out", "{tmp}"], "is a directory"),
    (["reproduce", "--root", "{tmp}/r", "--out", "/proc/nonexistent/r.md"], "--out"),
    (["reproduce", "--root", "{file}/r"], "not a directory"),
    (["reproduce", "--root", "{tmp}/r", "--seeds", "x"], "seeds"),
    (["reproduce", "--root", "{tmp}/r", "--workers", "0"], "workers"),
    (["reproduce", "--root", "{tmp}/r", "--bootstrap", "-1"], "bootstrap"),
    (["reproduce", "--root", "{tmp}/r", "--paper-epochs", "0"], "paper-epochs"),
]


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    from trainmap import analysis
    from trainmap.analysis.synthetic import write_synthetic_experiment

    base = tmp_path_factory.mktemp("cli")
    write_synthetic_experiment(base, "exp", n_runs=4, n_checkpoints=30, seed=1)
    write_synthetic_experiment(base, "bare", n_runs=4, n_checkpoints=30, seed=1)
    (base / "empty").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis.fit_experiment(base, "exp", max_states=2, restarts=1, workers=1)
    (base / "a-file").write_text("not a folder")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    yield {
        "file": str(base / "a-file"),
        "exp": str(base / "exp"),
        "bare": str(base / "bare"),
        "empty": str(base / "empty"),
        "busy": str(busy.getsockname()[1]),
    }
    busy.close()


def run(argv):
    try:
        return cli.main(argv)
    except SystemExit as exit_:  # argparse exits itself
        return exit_.code


@pytest.mark.parametrize("args, word", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_invocation_is_one_line_and_a_non_zero_exit(places, tmp_path, capsys, args, word):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    argv = [a.format(tmp=scratch, **places) for a in args]
    code = run(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code not in (0, None), (argv, captured.out[-500:], captured.err[-500:])
    assert len(lines) == 1 and lines[0].startswith("trainmap"), captured.err[-2000:]
    assert word.lower() in lines[0].lower() and "unexpected" not in lines[0], lines[0]
    leftovers = [p for p in scratch.rglob("*") if (p / "meta.json").exists()]
    assert not leftovers, leftovers


def test_the_table_covers_every_subcommand_and_enough_cases():
    assert len(CASES) >= 30
    assert {a[0] for a, _ in CASES} >= set(cli.SUBCOMMANDS)


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--seeds", TOO_BIG, "--out", "{tmp}/e"],
        ["train", "--out", "{file}/e"],
        ["serve", "--root", "{tmp}", "--host", "no such host!"],
        ["fit", "{file}"],
    ],
)
def test_a_fresh_process_prints_no_traceback(places, tmp_path, args):
    argv = [a.format(tmp=tmp_path, **places) for a in args]
    result = subprocess.run(
        [sys.executable, "-m", "trainmap.trainer.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_command_that_needs_torch_says_so_where_torch_is_missing(tmp_path):
    # as in the trainmap-dashboard Docker image: ``None`` in sys.modules blocks the import
    script = (
        "import sys; sys.modules['torch'] = None; from trainmap.trainer import cli; "
        f"sys.exit(cli.main(['train', '--task', 'modadd', '--preset', 'tiny', "
        f"'--seeds', '0', '--out', {str(tmp_path / 'e')!r}]))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("trainmap train: error:") and "needs torch" in line, line
    assert not (tmp_path / "e").exists()
