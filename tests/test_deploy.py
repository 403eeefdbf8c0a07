"""Docker image and compose file: everything they name exists, and the container command serves.

These check the files against the code and run the image's exact command
(gunicorn with the same arguments) on a fixture root, in seconds;
tests/test_container.py builds the images and runs the compose project for real.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from trainmap.trainer import rundir
from trainmap.trainer.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
DOCKERFILE = (REPO / "Dockerfile").read_text()
# one instruction a line: line continuations joined
INSTRUCTIONS = re.sub(r"\\\n\s*", " ", DOCKERFILE).splitlines()


def dockerfile_instructions(name: str) -> list[str]:
    """Arguments of every instruction ``name``."""
    return [line.split(None, 1)[1] for line in INSTRUCTIONS if line.startswith(name + " ")]


def dockerfile_stages() -> dict[str, list[str]]:
    """Each build stage's instructions by stage name, those it inherits included."""
    stages: dict[str, list[str]] = {}
    current = None
    for line in INSTRUCTIONS:
        if line.startswith("FROM "):
            _, parent, as_, name = line.split()
            assert as_.upper() == "AS", f"unnamed stage: {line}"
            current = stages[name] = [*stages.get(parent, []), line]
        elif current is not None and line.strip() and not line.startswith("#"):
            current.append(line)
    return stages


def dockerfile_env() -> dict[str, str]:
    env = {}
    for args in dockerfile_instructions("ENV"):
        for pair in shlex.split(args):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def container_command() -> list[str]:
    (cmd,) = dockerfile_instructions("CMD")
    return json.loads(cmd)


def code_text() -> str:
    return "\n".join(
        path.read_text()
        for package in ("app", "trainer", "analysis")
        for path in (REPO / package).rglob("*.py")
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_services_and_profiles():
    services = COMPOSE["services"]
    assert set(services) == {"dashboard", "redis", "trainer"}
    assert services["trainer"]["profiles"] == ["train"]
    assert "profiles" not in services["dashboard"]
    assert services["dashboard"]["depends_on"] == ["redis"]
    assert services["redis"]["image"].startswith("redis:")


def test_every_environment_variable_is_read_by_the_code_and_documented():
    code = code_text()
    readme = (REPO / "README.md").read_text()
    named = set(dockerfile_env()) | {
        key for service in COMPOSE["services"].values() for key in service.get("environment", {})
    }
    trainmap_vars = {key for key in named if key.startswith("TRAINMAP_")}
    assert {"TRAINMAP_ROOT", "TRAINMAP_CACHE_REDIS_URL", "TRAINMAP_BIND"} <= trainmap_vars
    for key in sorted(trainmap_vars):
        assert f'"{key}"' in code, f"{key} is set for the container but no code reads it"
        assert key in readme, f"{key} is not documented in README.md"


def test_ports_volumes_and_root_agree():
    dashboard = COMPOSE["services"]["dashboard"]
    env = dashboard["environment"]
    bind_port = env["TRAINMAP_BIND"].rsplit(":", 1)[1]
    # published on the host's loopback unless .env says otherwise: the dashboard has no login
    assert dashboard["ports"] == [f"${{TRAINMAP_PUBLISH:-127.0.0.1:{bind_port}}}:{bind_port}"]
    assert f"EXPOSE {bind_port}" in DOCKERFILE
    assert dockerfile_env()["TRAINMAP_BIND"].endswith(f":{bind_port}")
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in dashboard["volumes"]}
    assert mounts[env["TRAINMAP_ROOT"]] == "runs"
    assert mounts[env["TRAINMAP_CACHE_DIR"]] == "cache"
    trainer = COMPOSE["services"]["trainer"]
    assert "runs:" + env["TRAINMAP_ROOT"] in trainer["volumes"]
    assert set(COMPOSE["volumes"]) == {"runs", "cache"}
    assert env["TRAINMAP_CACHE_REDIS_URL"].startswith("redis://redis:")


def test_trainer_command_is_a_valid_trainmap_command():
    command = COMPOSE["services"]["trainer"]["command"]
    assert command[0] == "trainmap"
    args = build_parser().parse_args(command[1:])
    assert args.command == "train"
    out = command[command.index("--out") + 1]
    assert out.startswith(COMPOSE["services"]["dashboard"]["environment"]["TRAINMAP_ROOT"] + "/")
    from trainmap.trainer.tasks import get_task

    task = command[command.index("--task") + 1]
    preset = command[command.index("--preset") + 1]
    assert preset in get_task(task).presets


def test_dockerfile_image_rules():
    stages = dockerfile_stages()
    (base,) = {args.split()[0] for args in dockerfile_instructions("FROM")} - set(stages)
    assert re.fullmatch(r"python:3\.\d+-slim", base)
    (healthcheck,) = dockerfile_instructions("HEALTHCHECK")
    assert "curl" not in healthcheck and "wget" not in healthcheck
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    rules = [line for line in ignore if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", "the build context starts empty: no .venv, .git or .env in it"
    copies = [args.split() for args in dockerfile_instructions("COPY")]
    for source in (args[0] for args in copies if not args[0].startswith("--from=")):
        assert (REPO / source).exists(), f"COPY {source}: no such file"
        assert f"!{source}" in rules, f"COPY {source}: excluded by .dockerignore"


def test_compose_builds_each_service_from_its_target():
    stages = dockerfile_stages()
    images = {}
    for name in ("dashboard", "trainer"):
        service = COMPOSE["services"][name]
        target = service["build"]["target"]
        assert target in stages, f"{name}: no stage {target!r} in the Dockerfile"
        users = [line for line in stages[target] if line.startswith("USER ")]
        assert users and users[-1] != "USER root", f"{target} runs as root"
        pins_torch = any("torch==" in line for line in stages[target] if line.startswith("RUN "))
        assert pins_torch == (name == "trainer"), f"{target}: torch installed = {pins_torch}"
        images[name] = service["image"]
    assert len(set(images.values())) == 2, "two targets need two image names"
    # `docker build .` builds the last stage: the full image, as before there were two
    assert list(stages)[-1] == COMPOSE["services"]["trainer"]["build"]["target"]


def test_container_command_names_real_modules():
    command = container_command()
    assert command[0] == "gunicorn"
    config = command[command.index("--config") + 1]
    assert config.startswith("python:")
    importlib.import_module(config.removeprefix("python:"))
    module, attribute = command[-1].split(":")
    # importing the app module must not need torch
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys, {module}; assert callable({module}.{attribute}); "
            "print('torch' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "TRAINMAP_ROOT": str(REPO)},
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "False"


@pytest.fixture
def fixture_root(tmp_path):
    root = tmp_path / "runs"
    with rundir.RunWriter.create(root, "demo", "seed-0", task="toy", seed=0) as writer:
        for epoch in range(5):
            writer.append({"epoch": epoch, "step": epoch, "l2": 1.0 + epoch, "eval_acc": epoch / 5})
    (root / "demo" / "broken-run").mkdir()
    return root


def fetch(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


def test_container_command_serves_health_and_pages(tmp_path, fixture_root):
    port = free_port()
    env = {
        **os.environ,
        **dockerfile_env(),
        "TRAINMAP_ROOT": str(fixture_root),
        "TRAINMAP_CACHE_DIR": str(tmp_path / "cache"),
        "TRAINMAP_BIND": f"127.0.0.1:{port}",
        # the container has gunicorn on PATH; here it is beside this Python
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
    }
    env.pop("TRAINMAP_CACHE_REDIS_URL", None)
    server = subprocess.Popen(
        container_command(),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 60
        while True:
            try:
                status, body = fetch(f"http://127.0.0.1:{port}/health")
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    output = server.stdout.read().decode() if server.poll() is not None else ""
                    pytest.fail(f"gunicorn did not come up: {output}")
                time.sleep(0.3)
        assert status == 200
        assert json.loads(body)["status"] == "ok"
        status, page = fetch(f"http://127.0.0.1:{port}/")
        assert status == 200 and b"_dash-renderer" in page or b"dash" in page.lower()
        # the image's HEALTHCHECK command itself passes against this server
        (healthcheck,) = dockerfile_instructions("HEALTHCHECK")
        check = json.loads(healthcheck[healthcheck.index("CMD") + 3 :].strip())
        assert subprocess.run(check, env=env, timeout=30).returncode == 0
    finally:
        server.terminate()
        server.wait(timeout=30)
