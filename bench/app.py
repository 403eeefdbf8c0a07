"""Server-side latency of the dashboard's main callbacks, cold and warm.

    python bench/app.py                 # 40 runs x 1000 checkpoints (+ 400 x 10000 with --big)
    python bench/app.py --big           # also the 400 runs x 10000 checkpoints experiment
    python bench/app.py --data DIR      # where the synthetic experiments are kept

Each experiment is generated once (``analysis.synthetic``) and fitted once
through the analysis API with small settings (max_states 3, restarts 1); both
are reused on later runs. Callbacks are called the way the browser calls them:
a POST to ``/_dash-update-component`` through Flask's test client, so the
numbers include Dash's request handling, the cache and JSON encoding, but not
the network or the browser's rendering.

"cold" empties the dashboard cache (flask-caching and the in-process fit memo)
before each sample; the operating system's file cache stays warm, so it is the
cost of a dashboard restart, not of a machine reboot. "warm" repeats the same
request with the cache filled. Targets (issue 5): warm p95 <= 50 ms; cold first
map view <= 1.5 s (40 runs) and <= 5 s (400 runs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trainmap.app.testing import callback_request  # noqa: E402  (after the path is set)

# name: (runs, checkpoints, cold samples, cold first map view target in seconds)
CASES = {"small": (40, 1000, 3, 1.5), "big": (400, 10_000, 1, 5.0)}
WARM_REPEATS = 30


def ensure_experiment(root: Path, name: str, n_runs: int, n_checkpoints: int) -> None:
    """Generate and fit once; later runs reuse both (the fit is found by analysis)."""
    from trainmap import analysis
    from trainmap.analysis.synthetic import write_synthetic_experiment

    if not (root / name / ".generated").exists():
        started = time.perf_counter()
        print(f"generating {name}: {n_runs} runs x {n_checkpoints} checkpoints ...", flush=True)
        write_synthetic_experiment(
            root, name, n_runs=n_runs, n_checkpoints=n_checkpoints, seed=0, overwrite=True
        )
        (root / name / ".generated").write_text("ok")
        print(f"  generated in {time.perf_counter() - started:.1f} s", flush=True)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = analysis.fit_experiment(root, name, max_states=3, restarts=1, workers=2)
    how = "loaded" if getattr(fit, "loaded", False) else "fitted"
    print(f"  fit {how} in {time.perf_counter() - started:.1f} s (selected n={fit.selected_n})")


class Caller:
    """POSTs callbacks like the browser does."""

    def __init__(self, client):
        self.client = client
        self.deps = client.get("/_dash-dependencies").get_json()

    def __call__(self, output: str, values: dict, triggered: str | None = None) -> float:
        body = callback_request(self.deps, output, values, triggered)
        started = time.perf_counter()
        response = self.client.post("/_dash-update-component", json=body)
        elapsed = time.perf_counter() - started
        if response.status_code not in (200, 204):
            raise RuntimeError(f"{output}: HTTP {response.status_code}: {response.data[:500]!r}")
        return elapsed


def requests_for(experiment: str, n: int, run: str, edge: dict | None) -> dict:
    """The main callbacks with the inputs a user's first views produce."""
    return {
        "runs table": ("runs-table.data", {"runs-experiment.value": experiment}, None),
        "selection plot": ("selection-graph.figure", {"selection-experiment.value": experiment}, None),
        "map choices": ("map-n.options", {"map-experiment.value": experiment}, None),
        "map elements": (
            "map-graph.elements",
            {"map-experiment.value": experiment, "map-n.value": n, "map-run.value": run},
            None,
        ),
        "edge hover": ("map-hover-edge.children", {"map-graph.mouseoverEdgeData": edge}, None),
        "curves (run + band)": (
            "curves-graph.figure",
            {
                "curves-experiment.value": experiment,
                "curves-metric.value": "eval_acc",
                "curves-run.value": run,
                "curves-n.value": n,
                "curves-options.value": ["band"],
                "curves-smoothing.value": 5,
            },
            None,
        ),
    }  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def bench_case(
    root: Path, name: str, cache_dir: Path, cold_target: float, cold_repeats: int
) -> bool:
    from trainmap.app import data
    from trainmap.app.main import create_app

    app = create_app(root, cache_dir=cache_dir)
    call = Caller(app.server.test_client())
    with app.server.app_context():
        fp = data.fingerprint(str(root), name)
        overview = data.fit_overview(str(root), name, fp)
        n = overview["selected_n"]
        run = overview["runs"][0]
        elements = data.map_view(str(root), name, fp, n)
    edge = next((e["data"] for e in elements if "source" in e["data"]), None)
    requests = requests_for(name, n, run, edge)

    def clear():
        with app.server.app_context():
            data.cache.clear()
        data._LOCAL_FITS.clear()
        data._FINGERPRINTS.clear()

    # Cold: every callback on an empty cache, in the order a first visit makes them.
    cold: dict[str, list[float]] = {label: [] for label in requests}
    first_map: list[float] = []
    for _ in range(cold_repeats):
        clear()
        t_choices = call(*requests["map choices"])
        t_elements = call(*requests["map elements"])
        first_map.append(t_choices + t_elements)
        print(f"  cold first map view: {t_choices:.2f} s + {t_elements:.2f} s", flush=True)
        for label, request in requests.items():
            clear()
            cold[label].append(call(*request))
            print(f"  cold {label}: {cold[label][-1]:.2f} s", flush=True)
    # Warm: the same requests again and again with the cache filled.
    warm: dict[str, list[float]] = {}
    for label, request in requests.items():
        call(*request)
        warm[label] = [call(*request) for _ in range(WARM_REPEATS)]

    print(f"\n{name}: cold = empty dashboard cache ({cold_repeats} samples), warm = {WARM_REPEATS}")
    print(f"{'callback':24s} {'cold median':>12s} {'warm p50':>10s} {'warm p95':>10s}")
    ok = True
    for label in requests:
        p50 = percentile(warm[label], 50) * 1000
        p95 = percentile(warm[label], 95) * 1000
        flag = "" if p95 <= 50 else "  > 50 ms target"
        ok &= p95 <= 50
        cold_ms = (
            f"{statistics.median(cold[label]) * 1000:10.0f}ms" if cold[label] else "         -  "
        )
        print(f"{label:24s} {cold_ms} {p50:8.1f}ms {p95:8.1f}ms{flag}")
    if not first_map:
        print("cold first map view: not measured (--big-cold-samples 0)")
        return ok
    worst = max(first_map)
    ok &= worst <= cold_target
    print(
        f"cold first map view (choices + elements): median {statistics.median(first_map):.2f} s,"
        f" max {worst:.2f} s, target <= {cold_target:.1f} s"
        + ("" if worst <= cold_target else "  MISSED")
    )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--big", action="store_true", help="also 400 runs x 10000 checkpoints")
    parser.add_argument(
        "--big-cold-samples",
        type=int,
        default=1,
        help="cold samples for the big case (each reads all 400 runs twice: minutes; 0 skips)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trainmap-bench",
        help="where the synthetic experiments are kept between runs",
    )
    args = parser.parse_args()
    root = args.data / "root"
    root.mkdir(parents=True, exist_ok=True)
    ok = True
    with tempfile.TemporaryDirectory(prefix="trainmap-bench-cache-") as cache:
        for key in ["small"] + (["big"] if args.big else []):
            n_runs, n_checkpoints, cold_repeats, target = CASES[key]
            if key == "big":
                cold_repeats = args.big_cold_samples
            name = f"bench-{n_runs}x{n_checkpoints}"
            ensure_experiment(root, name, n_runs, n_checkpoints)
            ok &= bench_case(root, name, Path(cache) / key, target, cold_repeats)
    if not args.big:
        print("\n(400 runs x 10000 checkpoints: run with --big; generating and fitting it is slow)")
    print("\nall targets met" if ok else "\nsome targets missed (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
