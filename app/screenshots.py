"""``trainmap screenshots``: the documentation's pictures, from real runs, in one command.

Serves the dashboard for ``--root`` on a free local port (in this process, with
a throwaway cache), drives headless chromium through selenium and writes:

* ``training-map.png``: the map of the first experiment with an edge hovered by
  a real pointer move (the edge into a detour state if there is one, else the
  one most runs take) and its panel of driving features;
* ``strip.png``: the runs x epochs strip under the map;
* ``curves.png``: eval accuracy of the run with the most phases, its
  background shaded by its decoded states;
* ``compare.png``: the Compare page of the experiments (when there are two or more).

``scripts/demo.sh --no-serve`` trains and fits what the README's pictures show;
then ``trainmap screenshots --root trainmap-runs --out docs``. It needs selenium
(the ``test`` extra) and Debian's chromium + chromedriver.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

WIDTH, HEIGHT = 1400, 1000  # the window; headless chromium shows about 1400 x 860 of the page
MAX_HEIGHT = 4000
TIMEOUT = 60  # seconds a page gets to draw (a first load computes and caches its views)
PICTURES = ("training-map.png", "strip.png", "curves.png", "compare.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Write the documentation's screenshots (training map with a hovered edge, runs x epochs "
        "strip, curves with phases, compare) from the saved fits under ROOT. Needs selenium "
        "(pip install 'trainmap[test]') and chromium + chromedriver "
        "(apt-get install chromium chromium-driver)."
    )
    parser.add_argument(
        "--root",
        default=os.environ.get("TRAINMAP_ROOT", "trainmap-runs"),
        help="root of fitted experiments (default: $TRAINMAP_ROOT or ./trainmap-runs, the demo's)",
    )
    parser.add_argument("--out", default="docs", help="folder for the PNGs (default docs)")
    parser.add_argument(
        "--experiments",
        help="comma-separated; the first is pictured, all are compared (default: every fitted "
        "experiment of the root, by name)",
    )


def main(args: argparse.Namespace) -> int:
    from trainmap.app.browser import find_browser
    from trainmap.trainer.errors import UserError

    found = find_browser()
    if isinstance(found, str):
        raise UserError(f"trainmap screenshots {found}")
    started = time.time()
    experiments = _experiments(args.root, args.experiments)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create --out {out}: {error.strerror}") from None
    written = take_screenshots(args.root, experiments, out, *found)
    for path in written:
        print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")
    print(f"{len(written)} screenshots in {time.time() - started:.0f} s")
    return 0


def _experiments(root, given: str | None) -> list[str]:
    from trainmap import analysis
    from trainmap.trainer import rundir
    from trainmap.trainer.errors import UserError

    if not Path(root).is_dir():
        raise UserError(f"root {root} is not a directory; train and fit first: scripts/demo.sh")
    fitted = [e for e in rundir.list_experiments(root) if analysis.list_fits(root, e)]
    if given is None:
        if not fitted:
            raise UserError(f"no experiment under {root} has a saved fit; fit one first")
        return fitted
    names = [name.strip() for name in given.split(",") if name.strip()]
    unfitted = [name for name in names if name not in fitted]
    if not names or unfitted:
        raise UserError(
            f"--experiments: no saved fit for {', '.join(unfitted) or 'any'}; fitted: "
            f"{', '.join(fitted) or 'none'}"
        )
    return names


def take_screenshots(root, experiments: list[str], out: Path, chromium: str, chromedriver: str):
    """Serve ``root``, photograph the pages, return the paths written."""
    import logging

    from werkzeug.serving import make_server

    from trainmap.app.browser import start_chromium
    from trainmap.app.main import create_app

    with tempfile.TemporaryDirectory(prefix="trainmap-screenshots-") as scratch:
        app = create_app(root, cache_dir=Path(scratch) / "cache")
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        server = make_server("127.0.0.1", 0, app.server, threaded=True)  # port 0: a free one
        threading.Thread(target=server.serve_forever, daemon=True).start()
        driver = start_chromium(chromium, chromedriver, f"{scratch}/profile", WIDTH, HEIGHT)
        try:
            camera = _Camera(driver, f"http://127.0.0.1:{server.server_port}", root, out)
            written = [
                camera.map_with_hovered_edge(experiments[0]),
                camera.strip(experiments[0]),
                camera.curves(experiments[0]),
            ]
            if len(experiments) > 1:
                written.append(camera.compare(experiments))
            return written
        finally:
            driver.quit()
            server.shutdown()


class _Camera:
    def __init__(self, driver, base: str, root, out: Path):
        self.driver, self.base, self.root, self.out = driver, base, str(root), out

    def _fit_map(self, experiment: str):
        from trainmap import analysis

        fit = analysis.latest_fit(self.root, experiment)  # the fit the pages show
        return fit.map()

    def _open(self, path: str, height: int = HEIGHT) -> None:
        self.driver.set_window_size(WIDTH, height)
        self.driver.get(self.base + path)
        # No scrollbar in the pictures. (Chromium's --hide-scrollbars breaks the pointer
        # hover of Cytoscape edges, so the page's own scrollbars are hidden instead.)
        self.driver.execute_script(
            "const style = document.createElement('style');"
            "style.textContent = '::-webkit-scrollbar { display: none; }';"
            "document.head.appendChild(style);"
        )

    def _plot_ready(self, selector: str) -> bool:
        return self.driver.execute_script(
            "const g = document.querySelector(arguments[0] + ' .js-plotly-plot');"
            "return !!(g && g._fullLayout && g.offsetHeight > 0 && g.data && g.data.length);",
            selector,
        )

    def _shoot(self, name: str, element_id: str | None = None) -> Path:
        time.sleep(1.0)  # transitions and fonts settle
        path = self.out / name
        if element_id is None:
            self.driver.execute_script("window.scrollTo(0, 0);")
            self.driver.save_screenshot(str(path))
        else:
            element = self.driver.find_element("id", element_id)
            self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
            time.sleep(0.3)
            element.screenshot(str(path))
        return path

    def map_with_hovered_edge(self, experiment: str) -> Path:
        from trainmap.app.browser import cy_elements, hover_edge, wait_for

        tmap = self._fit_map(experiment)
        if not tmap.edges:
            raise AssertionError(f"the map of {experiment} has no transition to hover")
        detours = {s.state for s in tmap.states if s.is_detour}
        edge = max(tmap.edges, key=lambda e: (e.target in detours, e.n_runs))
        self._open(f"/map?experiment={experiment}")
        wait_for(
            lambda: cy_elements(self.driver, "edge") == len(tmap.edges),
            TIMEOUT,
            "the map's edges",
        )
        time.sleep(1.5)  # the layout animates into place; hover where the edge ends up
        # Cytoscape caches where its canvas is on the page; hiding the scrollbar moved it
        self.driver.execute_script("window.dispatchEvent(new Event('resize'));")
        time.sleep(0.5)
        for along in (1 / 3, 0.45, 0.6, 0.25):  # a thin edge can be missed by a pixel
            hover_edge(self.driver, f"e{edge.source}-{edge.target}", along=along)
            try:
                wait_for(
                    lambda: "take" in self.driver.find_element("id", "map-hover-edge").text,
                    5,
                    "the hovered edge's panel",
                )
            except AssertionError:
                continue
            return self._shoot("training-map.png")
        raise AssertionError(f"hovering edge S{edge.source} -> S{edge.target} shows no panel")

    def strip(self, experiment: str) -> Path:
        from trainmap.app.browser import wait_for

        self._open(f"/map?experiment={experiment}")
        wait_for(lambda: self._plot_ready("#map-strip"), TIMEOUT, "the strip")
        return self._shoot("strip.png", "map-strip")

    def curves(self, experiment: str) -> Path:
        from trainmap.app.browser import wait_for

        tmap = self._fit_map(experiment)
        run = max(sorted(tmap.paths), key=lambda r: len(np.unique(tmap.paths[r])))
        self._open(f"/curves?experiment={experiment}&run={run}&metric=eval_acc", height=820)
        wait_for(
            lambda: self.driver.execute_script(
                "const g = document.querySelector('#curves-graph .js-plotly-plot');"
                "return g && g.layout && g.layout.shapes ? g.layout.shapes.length : 0;"
            ),
            TIMEOUT,
            "the curves' phases",
        )
        return self._shoot("curves.png")

    def compare(self, experiments: list[str]) -> Path:
        from trainmap.app.browser import wait_for

        self._open(f"/compare?experiments={','.join(experiments)}")
        wait_for(lambda: self._plot_ready("#compare-convergence"), TIMEOUT, "the comparison")
        wait_for(
            lambda: self.driver.find_element("id", "compare-summary").text.strip(),
            TIMEOUT,
            "the comparison's summary",
        )
        # the whole page, down to the convergence chart: a window as tall as the page
        page = self.driver.execute_script("return document.documentElement.scrollHeight;")
        chrome = HEIGHT - self.driver.execute_script("return window.innerHeight;")
        self.driver.set_window_size(WIDTH, min(page + chrome, MAX_HEIGHT))
        return self._shoot("compare.png")
