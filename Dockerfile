# trainmap: two images from one file (README, "Docker" has their measured sizes).
#   --target dashboard   the dashboard alone: no torch, which it never imports
#   --target trainer     (the default) the same plus the CPU build of torch, for
#                        `trainmap train`; it serves the dashboard too
# Both share the layers of the base stage (Python and every other dependency).
# docker-compose.yml builds each service from its target.

# CPU-only torch keeps the trainer image small; override for another build of torch.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    TRAINMAP_ROOT=/data/runs \
    TRAINMAP_CACHE_DIR=/data/cache \
    TRAINMAP_BIND=0.0.0.0:8050 \
    TRAINMAP_WORKERS=2

RUN useradd --create-home --uid 1000 trainmap \
    && mkdir -p /data/runs /data/cache \
    && chown -R trainmap:trainmap /data

# Every dependency but torch, read from pyproject.toml so there is one list; a layer of
# its own, so a change to the code does not reinstall them.
COPY pyproject.toml /opt/trainmap/
RUN python -c "import re, tomllib; \
deps = tomllib.load(open('/opt/trainmap/pyproject.toml', 'rb'))['project']['dependencies']; \
print('\n'.join(d for d in deps if re.match(r'[A-Za-z0-9._-]+', d).group() != 'torch'))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Both images serve the dashboard; the installed package, not a source folder, is imported.
WORKDIR /home/trainmap
VOLUME ["/data/runs", "/data/cache"]
EXPOSE 8050
# No curl in a slim image: Python itself checks the health endpoint.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['TRAINMAP_BIND'].rsplit(':', 1)[1] + '/health', timeout=4)"]
CMD ["gunicorn", "--config", "python:trainmap.app.gunicorn_conf", "trainmap.app.main:server"]


# trainmap itself, built once into a wheel both images install (the source stays here).
FROM base AS wheel
COPY README.md /opt/trainmap/
COPY trainmap /opt/trainmap/trainmap
COPY trainer /opt/trainmap/trainer
COPY analysis /opt/trainmap/analysis
COPY app /opt/trainmap/app
COPY assets /opt/trainmap/assets
RUN pip wheel --no-deps --wheel-dir /wheels /opt/trainmap


FROM base AS dashboard
COPY --from=wheel /wheels /wheels
RUN pip install --no-deps /wheels/*.whl && rm -rf /wheels
USER trainmap


# torch before trainmap, so a change to the code does not reinstall torch
FROM base AS trainer
ARG TORCH_VERSION
ARG TORCH_INDEX_URL
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
COPY --from=wheel /wheels /wheels
# pip check: with torch, every requirement in pyproject.toml is met
RUN pip install --no-deps /wheels/*.whl && rm -rf /wheels && pip check
USER trainmap
