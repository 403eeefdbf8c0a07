"""No 500 from typed input: every server callback, every input, wrong-typed values.

The list of callbacks is derived from the running app (``app.callback_map``, the
same map Dash dispatches from), so a callback added to a page later is covered
without editing this file. For each input and state, the values a browser never
sends but anyone can post (text where a number belongs, a list for a run name, a
dict for a metric, malformed click and hover data) are posted one at a time, and
then all at once; the answer must be a response (200) or no update (204).
"""

from __future__ import annotations

import logging
import warnings

import pytest
from test_app_support import EXPERIMENT, make_root

from trainmap.app.testing import callback_request

WRONG = [
    "text",
    "",
    "../../etc/passwd",
    ["seed-0", "seed-1"],
    [[]],
    {"a": 1},
    12345,
    -1,
    1.5,
    True,
    {"points": "x"},
    {"points": [None, {"x": "a", "customdata": {"a": []}}]},
    {"id": [], "label": {}, "source": 5},
    [{"id": 1, "row": "x"}],
]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from trainmap import analysis
    from trainmap.app.main import create_app

    root = tmp_path_factory.mktemp("root")
    make_root(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis.fit_experiment(root, EXPERIMENT, max_states=3, restarts=1, workers=1)
    app = create_app(root, cache_dir=tmp_path_factory.mktemp("cache"))
    client = app.server.test_client()
    assert client.get("/").status_code == 200  # Dash copies the pages' callbacks on first use
    deps = client.get("/_dash-dependencies").get_json()
    # the callbacks Dash runs in Python (clientside ones run in the browser)
    python = {output for output, spec in app.callback_map.items() if spec.get("callback")}
    # (apps made earlier in this process may repeat entries: one per output is enough)
    server_side = list({d["output"]: d for d in deps if d["output"] in python}.values())
    assert len(server_side) == len(python)
    return client, server_side


def slots(dep) -> list[str]:
    return [f"{i['id']}.{i['property']}" for i in dep["inputs"] + dep["state"]]


def post(client, dep, values, triggered):
    body = callback_request([dep], dep["output"].strip("."), values, triggered)
    return client.post("/_dash-update-component", json=body)


def test_every_callback_input_is_covered(served):
    _, deps = served
    assert len(deps) >= 20
    assert all(isinstance(i["id"], str) for d in deps for i in d["inputs"] + d["state"]), (
        "a pattern-matching input: extend callback_request and this test to cover it"
    )


def test_wrong_typed_values_never_give_a_500(served, caplog):
    client, deps = served
    failures = []
    with caplog.at_level(logging.WARNING, logger="trainmap.app"):
        for dep in deps:
            for slot in slots(dep):
                for value in WRONG:
                    response = post(client, dep, {slot: value}, slot)
                    if response.status_code not in (200, 204):
                        failures.append((dep["output"][:60], slot, value, response.status_code))
            every = {slot: WRONG[3] for slot in slots(dep)}  # all at once: lists everywhere
            response = post(client, dep, every, slots(dep)[0] if slots(dep) else None)
            if response.status_code not in (200, 204):
                failures.append((dep["output"][:60], "all", WRONG[3], response.status_code))
    assert not failures, failures[:10]
    # what the guard turned into "no update" is logged, so a real bug stays visible
    assert all("failed on inputs" in r.getMessage() for r in caplog.records)


def test_the_guard_does_not_hide_a_valid_answer(served):
    client, deps = served
    dep = next(d for d in deps if d["output"].startswith("map-graph.elements"))
    response = post(client, dep, {"map-experiment.value": EXPERIMENT, "map-n.value": 2}, None)
    assert response.status_code == 200
    assert response.get_json()["response"]["map-graph"]["elements"]
