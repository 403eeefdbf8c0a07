"""Calling the dashboard's callbacks over HTTP, as the browser does (tests and bench/app.py)."""

from __future__ import annotations


def callback_request(deps: list[dict], output: str, values: dict, triggered: str | None = None):
    """The JSON body of a POST to ``/_dash-update-component``.

    ``deps`` is what ``/_dash-dependencies`` returns; ``output`` names the
    callback by its first output ``id.property``; ``values`` maps ``id.property``
    to the value of each input and state (missing ones are None); ``triggered``
    is the ``id.property`` that fired, if any.
    """
    dep = next(d for d in deps if d["output"].strip(".").startswith(output))

    def spec(items):
        return [
            {**i, "value": values.get(f"{i['id']}.{i['property']}")}
            for i in items
            if isinstance(i["id"], str)
        ]

    parts = dep["output"].strip(".").split("...")
    outputs = [
        {"id": p.rsplit(".", 1)[0], "property": p.rsplit(".", 1)[1].split("@")[0]} for p in parts
    ]
    return {
        "output": dep["output"],
        "outputs": outputs if dep["output"].startswith("..") else outputs[0],
        "inputs": spec(dep["inputs"]),
        "state": spec(dep["state"]),
        "changedPropIds": [triggered] if triggered else [],
    }
