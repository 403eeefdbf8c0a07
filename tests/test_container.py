"""The Dockerfile and docker-compose.yml, built and run for real.

The engine is podman with runc, set up by ``../shared/tools/container-engine.sh``
(stand-ins for ``python:3.11-slim`` and ``redis:7-alpine``, since no image registry
is reachable here; read its header). Both images are built from the targets that
docker-compose.yml names, then the compose project runs under a name of its own
(so runs on one machine cannot meet) and is always taken down with its volumes and
networks. The dashboard is published on 127.0.0.1 at a free port.

Checked: the dashboard serves and its HEALTHCHECK passes; every process runs as
uid 1000 and can write both volumes; the dashboard image has no torch; the
``train`` profile writes runs the dashboard then lists through a callback, whose
cache entries appear in the project's Redis; Redis publishes no port and is not
reachable from outside its internal network.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from container_support import (
    COMPOSE_FILE,
    REPO,
    EngineMissing,
    build_command,
    compose_services,
    engine_env,
)

from trainmap.app.testing import callback_request

pytestmark = pytest.mark.slow

EXPERIMENT = "modadd-container"
BUILD_TIMEOUT = 1200  # seconds; a first build installs every dependency from the index


class Engine:
    """podman and podman-compose with the environment container-engine.sh gives."""

    def __init__(self, env: dict[str, str]):
        self.env = env

    def run(self, *args: str, timeout: float = 120, check: bool = True, env=None):
        result = subprocess.run(
            args,
            env={**self.env, **(env or {})},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"{shlex.join(args)} exited {result.returncode}:\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def podman(self, *args: str, **kwargs):
        return self.run("podman", *args, **kwargs)


@pytest.fixture(scope="module")
def engine() -> Engine:
    try:
        return Engine(engine_env())
    except EngineMissing as error:
        # CI (CI=true) always has the engine beside the clone: there its absence is a
        # failure. A clone elsewhere has no engine script; the skip says so in the summary.
        if os.environ.get("CI") or not isinstance(error.__cause__, FileNotFoundError):
            pytest.fail(f"the container test needs its engine: {error}")
        pytest.skip(f"no container engine outside this project's machines: {error}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Stack:
    """One compose project: its name, images, published port and Redis password."""

    def __init__(self, engine: Engine, name: str, override: Path, port: int, password: str):
        self.engine, self.name, self.port, self.password = engine, name, port, password
        self.files = ["-f", str(COMPOSE_FILE), "-f", str(override)]
        self.env = {
            "TRAINMAP_CACHE_REDIS_PASSWORD": password,
            "TRAINMAP_PUBLISH": f"127.0.0.1:{port}",
        }

    def compose(self, *args: str, timeout: float = 180, check: bool = True):
        return self.engine.run(
            "podman-compose",
            "-p",
            self.name,
            *self.files,
            *args,
            timeout=timeout,
            check=check,
            env=self.env,
        )

    def container(self, service: str) -> str:
        ids = self.engine.podman(
            "ps",
            "-q",
            "--filter",
            f"label=io.podman.compose.project={self.name}",
            "--filter",
            f"label=com.docker.compose.service={service}",
        ).stdout.split()
        assert len(ids) == 1, f"{service}: expected one running container, found {ids}"
        return ids[0]

    def exec(self, service: str, *command: str, env: dict | None = None, timeout: float = 60):
        flags = [arg for key, value in (env or {}).items() for arg in ("--env", f"{key}={value}")]
        return self.engine.podman(
            "exec", *flags, self.container(service), *command, timeout=timeout
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def redis_keys(self) -> list[str]:
        """The dashboard's cache keys, read inside the Redis container (no port is published)."""
        out = self.exec(
            "redis",
            "redis-cli",
            "--scan",
            "--pattern",
            "trainmap:*",
            env={"REDISCLI_AUTH": self.password},
        ).stdout
        return out.split()

    def remove_leftovers(self) -> None:
        """Whatever ``down`` missed (e.g. a run killed by its timeout), by the project's label."""
        label = f"label=io.podman.compose.project={self.name}"
        podman = self.engine.podman
        for kind, listing in (
            ("container", ["ps", "-aq", "--filter", label]),
            ("volume", ["volume", "ls", "-q", "--filter", label]),
            ("network", ["network", "ls", "-q", "--filter", label]),
        ):
            names = podman(*listing, check=False).stdout.split()
            if names:
                podman(kind, "rm", "-f", *names, check=False)


@pytest.fixture(scope="module")
def images(engine):
    """Both targets built, under tags of this test run (untagged afterwards; the layers
    stay in podman's build cache for the next run)."""
    services = compose_services()
    run_id = secrets.token_hex(4)
    tags = {}
    try:
        for name in ("dashboard", "trainer"):
            tag = f"localhost/trainmap-test-{run_id}-{name}:latest"
            started = time.monotonic()
            engine.run(*build_command(services[name], tag), timeout=BUILD_TIMEOUT)
            tags[name] = tag
            size = int(engine.podman("image", "inspect", "--format", "{{.Size}}", tag).stdout)
            print(
                f"\n{name} image: {size / 1e6:.0f} MB, built in "
                f"{time.monotonic() - started:.0f} s (load {os.getloadavg()[0]:.1f})"
            )
        yield tags
    finally:
        for tag in tags.values():
            engine.podman("untag", tag, tag, check=False)  # this name only


@pytest.fixture(scope="module")
def stack(engine, images, tmp_path_factory):
    """The dashboard and Redis up, healthy, on a free port; taken down whatever happens."""
    name = f"trainmap-test-{os.getpid()}-{secrets.token_hex(3)}"
    override = tmp_path_factory.mktemp("compose") / "images.yml"
    override.write_text(
        yaml.safe_dump(
            {"services": {service: {"image": tag} for service, tag in images.items()}},
        )
    )
    stack = Stack(engine, name, override, free_port(), secrets.token_hex(16))
    try:
        stack.compose("up", "-d", "dashboard")
        wait_healthy(stack, timeout=120)
        yield stack
    finally:
        try:
            stack.compose("down", "--volumes", "--timeout", "5", check=False)
        finally:  # even when down itself hangs past its timeout
            stack.remove_leftovers()


def fetch(url: str, body: dict | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.read()


def wait_healthy(stack: Stack, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, _ = fetch(stack.url("/health"))
            if status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            logs = stack.compose("logs", "dashboard", check=False)
            pytest.fail(
                f"dashboard not healthy after {timeout:.0f} s:\n{logs.stdout[-3000:]}"
                f"{logs.stderr[-2000:]}"
            )
        time.sleep(1)


def call(stack: Stack, output: str, values: dict) -> dict:
    """POST one dashboard callback over the published port, as the browser does."""
    _, deps = fetch(stack.url("/_dash-dependencies"))
    status, body = fetch(
        stack.url("/_dash-update-component"), callback_request(json.loads(deps), output, values)
    )
    assert status == 200, body[:2000]
    return json.loads(body)["response"]


@pytest.fixture(scope="module")
def trained(stack):
    """The ``train`` profile's trainer service trains two tiny seeds into the runs volume."""
    stack.compose(
        "--profile",
        "train",
        "run",
        "--rm",
        "-T",
        "trainer",
        "trainmap",
        "train",
        "--task",
        "modadd",
        "--preset",
        "tiny",
        "--seeds",
        "0-1",
        "--workers",
        "1",
        "--out",
        f"/data/runs/{EXPERIMENT}",
        timeout=300,
    )
    return ["seed-0", "seed-1"]


def test_dashboard_is_healthy_and_its_healthcheck_passes(engine, stack):
    status, body = fetch(stack.url("/health"))
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, page = fetch(stack.url("/"))
    assert status == 200 and b"_dash-renderer" in page
    container = stack.container("dashboard")
    healthcheck = engine.podman(
        "inspect", "--format", "{{json .Config.Healthcheck.Test}}", container
    ).stdout
    assert "/health" in healthcheck, f"the image lost its HEALTHCHECK: {healthcheck}"
    # runs the image's HEALTHCHECK command inside the container, as the engine would
    assert engine.podman("healthcheck", "run", container, check=False).returncode == 0
    health = engine.podman("inspect", "--format", "{{.State.Health.Status}}", container).stdout
    assert health.strip() == "healthy"


def test_every_process_runs_as_uid_1000_and_both_volumes_are_writable(stack):
    probe = (
        "import glob, os, pathlib;"
        "uids = {int(next(line.split()[1] for line in open(f) if line.startswith('Uid:')))"
        " for f in glob.glob('/proc/[0-9]*/status')};"
        "print(sorted(uids));"
        "[pathlib.Path(d, '.probe').write_text('x') or os.remove(os.path.join(d, '.probe'))"
        " for d in ('/data/runs', '/data/cache')];"
        "print(os.stat('/data/runs').st_uid, os.stat('/data/cache').st_uid)"
    )
    uids, owners = stack.exec("dashboard", "python", "-c", probe).stdout.splitlines()
    assert json.loads(uids) == [1000], f"processes run as uids {uids}"
    assert owners.split() == ["1000", "1000"]


def test_dashboard_image_has_no_torch_and_trainer_image_has_it(engine, images):
    find = "import importlib.util; print(importlib.util.find_spec('torch') is not None)"
    for name, expected in (("dashboard", "False"), ("trainer", "True")):
        out = engine.podman("run", "--rm", images[name], "python", "-c", find).stdout
        assert out.strip() == expected, f"{name} image: torch found = {out.strip()}"
    train = ["trainmap", "train", "--preset", "tiny", "--seeds", "0", "--out", "/tmp/e"]
    result = engine.podman("run", "--rm", images["dashboard"], *train, check=False)
    assert result.returncode == 2 and "needs torch" in result.stderr, result.stderr[-2000:]


def test_trained_runs_are_listed_through_the_redis_cache(stack, trained):
    assert stack.redis_keys() == [], "the dashboard cached before any callback"
    out = call(stack, "runs-table.data", {"runs-experiment.value": EXPERIMENT})
    rows = out["runs-table"]["data"]
    assert sorted(row["run"] for row in rows) == trained
    assert {row["status"] for row in rows} == {"completed"}, rows
    assert stack.redis_keys(), "the callback wrote no entry into the project's Redis"


def test_redis_is_reachable_only_on_its_internal_network(stack):
    container = stack.container("redis")
    assert stack.engine.podman("port", container).stdout.strip() == ""
    # the trainer joins only the default network: no route to Redis, not even its name
    reach = (
        "import socket, sys\n"
        "try:\n"
        "    socket.create_connection(('redis', 6379), timeout=5)\n"
        "except OSError as error:\n"
        "    sys.exit(f'unreachable: {error}')\n"
    )
    result = stack.compose(
        "--profile",
        "train",
        "run",
        "--rm",
        "-T",
        "--no-deps",
        "trainer",
        "python",
        "-c",
        reach,
        check=False,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "unreachable" in output, output[-2000:]
    # while the dashboard, on both networks, does
    stack.exec(
        "dashboard",
        "python",
        "-c",
        "import socket; socket.create_connection(('redis', 6379), timeout=5)",
    )
