"""The container engine and image builds, shared by tests/test_container.py and
bench/images.py: podman with runc, set up by ``../shared/tools/container-engine.sh``
(read its header: no image registry is reachable here, so ``python:3.11-slim`` and
``redis:7-alpine`` are stand-ins built from Debian packages)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENGINE_SCRIPT = Path("shared") / "tools" / "container-engine.sh"
# pip inside a build reaches the package index through the host network; torch comes
# from the machine's local CPU wheel when there is one.
WHEELS = Path("/opt/wheels")
DEFAULT_INDEX = "https://pypi.org/simple"


class EngineMissing(RuntimeError):
    """No container engine, or its set-up failed; the message says why."""


def engine_script() -> Path:
    """``shared/tools/container-engine.sh`` beside the repository (or above a worktree)."""
    override = os.environ.get("TRAINMAP_CONTAINER_ENGINE")
    if override:
        return Path(override)
    for folder in REPO.parents:
        if (folder / ENGINE_SCRIPT).is_file():
            return folder / ENGINE_SCRIPT
    raise EngineMissing(
        f"no {ENGINE_SCRIPT} in any folder above {REPO} (CI has it beside the clone; "
        "or set TRAINMAP_CONTAINER_ENGINE to its path)"
    ) from FileNotFoundError(ENGINE_SCRIPT)


def engine_env() -> dict[str, str]:
    """Sets the engine up (idempotent; minutes the first time) and returns the
    environment that runs its podman and podman-compose."""
    script = engine_script()
    setup = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900)
    if setup.returncode != 0:
        raise EngineMissing(f"{script} failed (it needs root and apt):\n{setup.stderr[-3000:]}")
    printed = subprocess.run(
        ["bash", "-c", 'eval "$(bash "$0" --env)" && env -0', str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return dict(item.split("=", 1) for item in printed.split("\0") if "=" in item)


def compose_services() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())["services"]


def build_command(service: dict, tag: str, context: Path = REPO, *extra: str) -> list[str]:
    """``podman build`` of one compose service's target, as container-engine.sh says."""
    build = service["build"]
    command = ["podman", "build", "--network=host", "--pull=never", *extra]
    # podman's default OCI format drops HEALTHCHECK; Docker's format keeps it
    command += ["--format", "docker", "--build-arg", f"TORCH_INDEX_URL={DEFAULT_INDEX}"]
    if WHEELS.is_dir():
        command += ["--volume", f"{WHEELS}:{WHEELS}:ro", "--env", f"PIP_FIND_LINKS={WHEELS}"]
    if Path("/etc/ssl/certs").is_dir():
        command += ["--volume", "/etc/ssl/certs:/etc/ssl/certs:ro"]
    return [*command, "--target", build["target"], "-t", tag, str(context / build["context"])]
