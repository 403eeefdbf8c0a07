"""gunicorn settings for the dashboard, from environment variables.

The Docker image runs ``gunicorn --config python:trainmap.app.gunicorn_conf trainmap.app.main:server``;
CI runs the same command against a fixture root.
"""

import os

bind = os.environ.get("TRAINMAP_BIND", "127.0.0.1:8050")
workers = int(os.environ.get("TRAINMAP_WORKERS", "2"))
# Fitting from the UI runs in a background process, but the first all-seeds
# curve of a very large experiment (400 runs x 10000 checkpoints) reads every
# run: about two minutes on a cold cache.
timeout = int(os.environ.get("TRAINMAP_TIMEOUT", "300"))
accesslog = "-"
# gunicorn 27 creates a control socket under ~/.gunicorn by default; nothing
# here uses it, and the home directory may be read-only in a container.
control_socket_disable = True
