"""A running run's predicted convergence in a real browser, updating as rows are appended.

Run with ``pytest --headless``. A synthetic experiment (16 runs x 80
checkpoints) is fitted; then a new run starts writing through
``trainer.rundir.RunWriter`` (status running, its writer is this process).
The Runs page must show its prediction, the Metric curves page must draw it,
and both must change when the run writes past the fork of the map.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from test_app_browser import assert_no_console_errors, nav, wait_for, xdg_dirs  # noqa: F401

from trainmap.analysis import predict, predict_study
from trainmap.analysis.synthetic import make_synthetic, write_synthetic_experiment
from trainmap.app import prediction_figures
from trainmap.trainer import rundir

pytestmark = pytest.mark.browser
EXPERIMENT = "synth"
N_RUNS, N_CHECKPOINTS, SEED = 16, 80, 3
REFRESH_WAIT = 15  # both pages poll every 3 s; the first prediction also validates


@pytest.fixture
def live_root(tmp_path):
    from trainmap import analysis

    root = tmp_path / "root"
    root.mkdir()
    write_synthetic_experiment(
        root, EXPERIMENT, n_runs=N_RUNS, n_checkpoints=N_CHECKPOINTS, seed=SEED
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis.fit_experiment(root, EXPERIMENT, max_states=4, restarts=2, workers=1)
    # A run the fit never saw: the next run of the same synthetic family.
    truth = make_synthetic(n_runs=N_RUNS + 1, n_checkpoints=N_CHECKPOINTS, seed=SEED)
    frame = truth.frame(N_RUNS)
    path = truth.paths[N_RUNS]
    fork = int(np.flatnonzero(path != path[0])[0])
    writer = rundir.RunWriter.create(root, EXPERIMENT, "live", task="synthetic")
    writer.append_frame(frame.iloc[:5])
    yield root, writer, frame, fork
    writer.close()


def expected_cell(root) -> str:
    summary = predict.predict_run(root, EXPERIMENT, "live").summary()
    validation = predict_study.validate(root, EXPERIMENT)
    return prediction_figures.prediction_cell(summary, validation)


def live_cell(dash_duo) -> str:
    """The predicted-convergence cell of the run named live ('' if not shown yet)."""
    return dash_duo.driver.execute_script(
        "for (const tr of document.querySelectorAll('#runs-table tr')) {"
        "  const run = tr.querySelector('td[data-dash-column=run]');"
        "  if (run && run.textContent.trim() === 'live') {"
        "    const cell = tr.querySelector('td[data-dash-column=predicted_convergence]');"
        "    return cell ? cell.textContent.trim() : ''; } }"
        "return '';"
    )


def chart_prediction(dash_duo) -> list:
    """(x0, x1) of the prediction band drawn on the curves chart, [] if none."""
    return dash_duo.driver.execute_script(
        "const g = document.querySelector('#curves-graph .js-plotly-plot');"
        "const s = (g && g.layout && g.layout.shapes) || [];"
        "const band = s.find(x => x.name === 'predicted convergence interval');"
        "return band ? [band.x0, band.x1] : [];"
    )


def test_running_run_prediction_appears_and_updates(dash_duo, live_root, tmp_path):
    from trainmap.app.main import create_app

    root, writer, frame, fork = live_root
    dash_duo.driver.set_window_size(1400, 1000)
    dash_duo.start_server(create_app(root, cache_dir=tmp_path / "cache"))

    # Runs page: before the fork the run's cell shows a prediction from every run.
    dash_duo.wait_for_contains_text("#runs-table", "live", timeout=10)
    assert "predicted convergence" in dash_duo.find_element("#runs-table").text
    first = expected_cell(root)
    assert f"{N_RUNS} runs" in first
    wait_for(lambda: live_cell(dash_duo) == first, timeout=REFRESH_WAIT, message=first)
    # Completed runs get no prediction.
    assert (
        dash_duo.driver.execute_script(
            "return [...document.querySelectorAll('td[data-dash-column=predicted_convergence]')]"
            ".filter(td => td.textContent.trim()).length"
        )
        == 1
    )

    # The run writes past the fork: the cell follows without a reload.
    writer.append_frame(frame.iloc[5 : fork + 6])
    second = expected_cell(root)
    assert second != first
    wait_for(lambda: live_cell(dash_duo) == second, timeout=REFRESH_WAIT, message=second)

    # Metric curves: the same prediction drawn on the run's chart, and updated live.
    dash_duo.driver.get(f"{dash_duo.server_url}/curves?experiment={EXPERIMENT}&run=live")
    summary = predict.predict_run(root, EXPERIMENT, "live").summary()
    high = summary["high"] if summary["high"] is not None else summary["floor"]
    wait_for(
        lambda: chart_prediction(dash_duo) == [summary["low"], high],
        timeout=REFRESH_WAIT,
        message="the prediction band on the chart",
    )
    dash_duo.wait_for_contains_text("#curves-prediction", f"at epoch {fork + 5}", timeout=10)
    assert "80% interval" in dash_duo.find_element("#curves-prediction").text
    writer.append_frame(frame.iloc[fork + 6 : fork + 12])
    dash_duo.wait_for_contains_text(
        "#curves-prediction", f"at epoch {fork + 11}", timeout=REFRESH_WAIT
    )
    assert_no_console_errors(dash_duo)
