# trainmap: two images from one file (README, "Docker" has their measured sizes).
#   --target dashboard   the dashboard alone: no torch, which it never imports
#   --target trainer     (the default) the dashboard's layers plus the CPU build of torch,
#                        for `trainmap train`; it serves the dashboard too
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

COPY README.md /opt/trainmap/
COPY trainmap /opt/trainmap/trainmap
COPY trainer /opt/trainmap/trainer
COPY analysis /opt/trainmap/analysis
COPY app /opt/trainmap/app
COPY assets /opt/trainmap/assets
# A regular install (assets/ is package data); the source is not kept, and the working
# directory is not the source folder, whose trainmap/ would shadow the installed package.
RUN pip install --no-deps /opt/trainmap && rm -rf /opt/trainmap
WORKDIR /home/trainmap


FROM base AS dashboard
USER trainmap
VOLUME ["/data/runs", "/data/cache"]
EXPOSE 8050

# No curl in a slim image: Python itself checks the health endpoint.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['TRAINMAP_BIND'].rsplit(':', 1)[1] + '/health', timeout=4)"]

CMD ["gunicorn", "--config", "python:trainmap.app.gunicorn_conf", "trainmap.app.main:server"]


FROM dashboard AS trainer
ARG TORCH_VERSION
ARG TORCH_INDEX_URL
USER root
# pip check: with torch added, every requirement in pyproject.toml is met.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" && pip check
USER trainmap
