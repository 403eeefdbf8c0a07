"""Size and build time of the two Docker images: the dashboard's (no torch) against
the trainer's (with torch; the one image everything ran in before there were two).

    python bench/images.py            # cold builds (--no-cache), then a rebuild after a code change

Uses podman from ``../shared/tools/container-engine.sh``, which builds the base images
as local stand-ins (Debian's Python 3.11: larger than the real ``python:3.11-slim``), so
the size above the base image is printed too; that part is what the Dockerfile adds
on any base. "cold" builds every layer; "code change" rebuilds a copy of the build
context with one line added to app/main.py, the common case while developing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from container_support import build_command, compose_services, engine_env  # noqa: E402

BASE_IMAGE = "docker.io/library/python:3.11-slim"
# the build context: .dockerignore lets in only these (tests/test_deploy.py checks)
CONTEXT = ["Dockerfile", ".dockerignore", "pyproject.toml", "README.md"]
CONTEXT_DIRS = ["trainmap", "trainer", "analysis", "app", "assets"]


def image_size(env: dict, image: str) -> int:
    out = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Size}}", image],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out)


def timed_build(env: dict, service: dict, tag: str, context: Path, *extra: str) -> float:
    started = time.monotonic()
    subprocess.run(
        build_command(service, tag, context, *extra),
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=3600,
    )
    return time.monotonic() - started


def copy_context(target: Path) -> None:
    for name in CONTEXT:
        shutil.copy2(REPO / name, target / name)
    for name in CONTEXT_DIRS:
        shutil.copytree(REPO / name, target / name, ignore=shutil.ignore_patterns("__pycache__"))


def main() -> None:
    env = engine_env()
    services = compose_services()
    base = image_size(env, BASE_IMAGE)
    tag = f"localhost/trainmap-bench-{os.getpid()}"
    results = {}
    try:
        with tempfile.TemporaryDirectory() as scratch:
            context = Path(scratch)
            copy_context(context)
            for name in ("trainer", "dashboard"):
                cold = timed_build(env, services[name], f"{tag}-{name}", context, "--no-cache")
                results[name] = {"cold": cold, "load_cold": os.getloadavg()[0]}
            for name in ("trainer", "dashboard"):  # settles the layer cache: untimed
                timed_build(env, services[name], f"{tag}-{name}", context)
            with open(context / "app" / "main.py", "a") as main_py:
                main_py.write("# a code change\n")
            for name in ("trainer", "dashboard"):
                warm = timed_build(env, services[name], f"{tag}-{name}", context)
                size = image_size(env, f"{tag}-{name}")
                results[name].update(warm=warm, size=size, load_warm=os.getloadavg()[0])
    finally:
        for name in ("trainer", "dashboard"):
            subprocess.run(["podman", "untag", f"{tag}-{name}", f"{tag}-{name}"], env=env)

    print(f"base image (stand-in for python:3.11-slim): {base / 1e6:.0f} MB")
    print(
        f"{'image':<10} {'size MB':>8} {'above base':>10} {'cold build s':>13} {'code change s':>14}"
    )
    for name in ("trainer", "dashboard"):
        r = results[name]
        print(
            f"{name:<10} {r['size'] / 1e6:>8.0f} {(r['size'] - base) / 1e6:>10.0f} "
            f"{r['cold']:>13.0f} {r['warm']:>14.0f}   "
            f"(load {r['load_cold']:.1f} / {r['load_warm']:.1f})"
        )
    dash, full = results["dashboard"], results["trainer"]
    print(
        f"dashboard / trainer: size {dash['size'] / full['size']:.2f}, above base "
        f"{(dash['size'] - base) / (full['size'] - base):.2f}, cold build "
        f"{dash['cold'] / full['cold']:.2f}  (load average {os.getloadavg()})"
    )


if __name__ == "__main__":
    main()
