# trainmap: dashboard (default command) and trainer (docker-compose profile "train").
FROM python:3.11-slim

# CPU-only torch keeps the image small; override for another build of torch.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TRAINMAP_ROOT=/data/runs \
    TRAINMAP_CACHE_DIR=/data/cache \
    TRAINMAP_BIND=0.0.0.0:8050 \
    TRAINMAP_WORKERS=2

RUN useradd --create-home --uid 1000 trainmap \
    && mkdir -p /data/runs /data/cache \
    && chown -R trainmap:trainmap /data

WORKDIR /opt/trainmap
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
COPY pyproject.toml README.md ./
COPY trainer trainer
COPY analysis analysis
COPY app app
COPY assets assets
# Editable, so the dashboard finds the top-level assets/ folder beside app/.
RUN pip install -e .

USER trainmap
VOLUME ["/data/runs", "/data/cache"]
EXPOSE 8050

# No curl in a slim image: Python itself checks the health endpoint.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['TRAINMAP_BIND'].rsplit(':', 1)[1] + '/health', timeout=4)"]

CMD ["gunicorn", "--config", "python:trainmap.app.gunicorn_conf", "trainmap.app.main:server"]
