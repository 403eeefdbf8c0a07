"""A newcomer's journey: the README's demo command trains, fits and serves; the browser sees it.

``TRAINMAP_DEMO_PRESET=tiny`` keeps it short. The demo runs through
``scripts/demo.sh``, exactly as the README says, in this test's virtual
environment (``TRAINMAP_VENV``), which the test command itself created fresh.
One demo serves both tests; stopping it must stop its live run too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from test_app_browser import wait_for
from test_predict_browser import chart_prediction

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "modadd-tiny"
LIVE_RUN = "live-seed-4"  # the seed after the demo's 0-3
# A tiny seed writes 30 checkpoints; 3 s apart, the live run trains for 90 s or more.
LIVE_PACE = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("demo")
    port = free_port()
    env = {
        **os.environ,
        "TRAINMAP_VENV": sys.prefix,
        "TRAINMAP_DEMO_PRESET": "tiny",
        "TRAINMAP_CACHE_DIR": str(tmp_path / "cache"),
    }
    command = [str(REPO / "scripts" / "demo.sh"), "--root", str(tmp_path / "runs")]
    command += ["--seeds", "0-3", "--port", str(port), "--max-states", "4", "--restarts", "2"]
    # A tiny run is too short for the criterion to find phases; force two states
    # so the journey (map, hover, shaded curves) is exercised end to end.
    command += ["--n-states", "2", "--live-pace", str(LIVE_PACE)]
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # so the whole process group can be stopped
    )
    output: list[str] = []
    serving = threading.Event()

    def read_output():
        for line in process.stdout:
            output.append(line)
            if "[3/3] serving the dashboard" in line:
                serving.set()

    threading.Thread(target=read_output, daemon=True).start()
    try:
        deadline = time.time() + 600
        while not serving.is_set():
            if process.poll() is not None or time.time() > deadline:
                pytest.fail("the demo did not start serving:\n" + "".join(output))
            time.sleep(0.5)
        # the server prints its URL before it listens; wait until it answers
        for _ in range(100):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}", tmp_path / "runs", output
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    # no orphan: the live run's trainer stopped with the demo and said so
    from trainmap.trainer import rundir

    meta = rundir.read_meta(tmp_path / "runs" / EXPERIMENT / LIVE_RUN)
    assert not Path(f"/proc/{meta['writer']['pid']}").exists()
    assert meta["status"] in ("interrupted", "completed")


def live_cell(browser) -> str:
    """The predicted-convergence cell of the live run ('' if not shown yet)."""
    return browser.driver.execute_script(
        "for (const tr of document.querySelectorAll('#runs-table tr')) {"
        "  const run = tr.querySelector('td[data-dash-column=run]');"
        f"  if (run && run.textContent.trim() === '{LIVE_RUN}') {{"
        "    const cell = tr.querySelector('td[data-dash-column=predicted_convergence]');"
        "    return cell ? cell.textContent.trim() : ''; } }"
        "return '';"
    )


def test_demo_trains_a_live_run_and_shows_its_prediction_as_it_trains(demo, dash_br):
    """After fitting, one more seed trains while the demo serves; its prediction is live."""
    from trainmap import analysis
    from trainmap.analysis import predict, predict_study
    from trainmap.app import prediction_figures
    from trainmap.trainer import rundir

    url, root, output = demo
    text = "".join(output)
    curves = f"{url}/curves?experiment={EXPERIMENT}&run={LIVE_RUN}&metric=eval_acc"
    assert f"live run {EXPERIMENT}/{LIVE_RUN} (seed 4, not in the fit) trains" in text
    assert f"its predicted convergence, updating as it trains: {curves}\n" in text
    assert f"the Runs page, prediction column: {url}/?experiment={EXPERIMENT}\n" in text
    run_dir = root / EXPERIMENT / LIVE_RUN

    def rows() -> int:
        return len(rundir.read_metrics(run_dir)) if (run_dir / "metrics.jsonl").exists() else 0

    wait_for(lambda: rows() >= 1, timeout=60, message="the live run's first checkpoint")
    # While it trains, the demo's fit is the current one: not stale, not refitted.
    fits = analysis.list_fits(root, EXPERIMENT)
    assert [fit["current"] for fit in fits] == [True]
    assert rundir.summarize_run(run_dir).status == "running"

    # Runs page: the live run's cell is the prediction from the rows written so far.
    validation = predict_study.validate(root, EXPERIMENT)

    def cell_is_current_prediction():
        shown = live_cell(dash_br)
        summary = predict.predict_run(root, EXPERIMENT, LIVE_RUN).summary()
        return shown and shown == prediction_figures.prediction_cell(summary, validation) and shown

    dash_br.driver.get(f"{url}/?experiment={EXPERIMENT}")
    cell = wait_for(cell_is_current_prediction, timeout=30, message="the live run's prediction")
    assert not cell.startswith("no prediction"), cell

    # Metric curves: the band on the chart, the words under it follow the new rows.
    dash_br.driver.get(curves)
    wait_for(lambda: chart_prediction(dash_br), timeout=30, message="the prediction band")

    def epoch_shown() -> int:
        words = dash_br.driver.find_element(By.ID, "curves-prediction").text
        return int(words.split(" at epoch ")[1].split(".")[0]) if " at epoch " in words else -1

    first = wait_for(lambda: epoch_shown() > 0 and epoch_shown(), timeout=30, message="words")
    later = wait_for(
        lambda: epoch_shown() > first and epoch_shown(),
        timeout=30,
        message="the prediction at a later epoch",
    )
    assert later > first
    assert predict.predict_run(root, EXPERIMENT, LIVE_RUN).epoch >= later
    assert dash_br.get_logs() == []


def cy_count(browser, selector: str) -> int:
    return browser.driver.execute_script(
        f"const el = document.getElementById('map-graph');"
        f"return el && el._cyreg && el._cyreg.cy ? el._cyreg.cy.{selector}.length : -1;"
    )


def test_demo_trains_fits_and_serves_the_map(demo, dash_br):
    url, root, output = demo
    text = "".join(output)
    assert "[1/3] training modadd (tiny preset) and modadd_ln (tiny preset)" in text
    assert "[2/3] fitting HMMs" in text
    # both experiments trained and summarised: what tells them apart is printed
    for experiment in (EXPERIMENT, "modadd_ln-tiny"):
        assert len(list((root / experiment).glob("seed-*/metrics.jsonl"))) == 4
    assert text.count("forks: ") == 2 and text.count("convergence (eval acc >= 0.9): ") == 2
    assert "/compare?experiments=modadd-tiny,modadd_ln-tiny" in text

    # Runs page: every seed listed with its status.
    dash_br.server_url = url
    dash_br.driver.get(f"{url}/?experiment={EXPERIMENT}")
    table = wait_for(
        lambda: dash_br.driver.find_elements(By.ID, "runs-table"), timeout=30, message="runs table"
    )
    wait_for(
        lambda: all(f"seed-{s}" in table[0].text for s in range(4)),
        timeout=30,
        message="all seeds listed",
    )
    assert "completed" in table[0].text

    # Training map: more than one state, and hovering an edge shows its features.
    dash_br.driver.get(f"{url}/map?experiment={EXPERIMENT}")
    wait_for(lambda: cy_count(dash_br, "nodes()") >= 2, timeout=60, message="map with ≥2 states")
    edges = cy_count(dash_br, "edges()")
    assert edges >= 1, "the demo's map should show a phase transition"

    last_hover = [0.0]

    def hovered_edge_text():
        # The map may be redrawn once more as the page settles (its n and state
        # names arrive), which clears the panel: hover again, every 2 s, until the
        # text shows. It still fails if hovering an edge never fills the panel.
        text = dash_br.driver.find_element(By.ID, "map-hover-edge").text
        if "→" in text:
            return text
        if time.monotonic() - last_hover[0] > 2:
            last_hover[0] = time.monotonic()
            dash_br.driver.execute_script(
                "document.getElementById('map-graph')._cyreg.cy.edges()[0].emit('mouseover');"
            )
        return None

    hover = wait_for(hovered_edge_text, timeout=30, message="edge hover text")
    # "1 run takes it" or "3 runs take it"
    assert " z" in hover and ("runs take it" in hover or "1 run takes it" in hover)

    # Metric curves of one run: background shaded by its decoded states.
    dash_br.driver.get(f"{url}/curves?experiment={EXPERIMENT}&run=seed-0&metric=eval_acc")
    shapes = wait_for(
        lambda: dash_br.driver.execute_script(
            "const g = document.querySelector('#curves-graph .js-plotly-plot');"
            "return g && g.layout && g.layout.shapes ? g.layout.shapes.length : 0;"
        ),
        timeout=60,
        message="shaded phases",
    )
    assert shapes >= 1
    assert dash_br.get_logs() == []
