"""No pickles from caches: the dashboard's caches are a trust boundary it enforces.

flask-caching's FileSystemCache and RedisCache, and diskcache (the background
"Fit now" queue), load pickles, so a file planted in the cache folder runs code in
the dashboard. The folder is created 0700 and refused when anyone else could
plant a file there; Redis is refused without a password unless it is on loopback,
and docker-compose.yml keeps it on an internal network with a password.
"""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import pytest
import yaml

from trainmap.app.main import check_redis, create_app, secure_cache_dir
from trainmap.trainer.errors import UserError

REPO = Path(__file__).resolve().parent.parent
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture
def root(tmp_path):
    (tmp_path / "root").mkdir()
    return tmp_path / "root"


def test_a_new_cache_folder_is_private(root, tmp_path):
    cache = tmp_path / "new" / "cache"
    create_app(root, cache_dir=cache)
    for path in (cache, cache / "views", cache / "background"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path


@pytest.mark.parametrize("mode, why", [(0o777, "group or others"), (0o770, "group or others")])
def test_a_cache_folder_others_can_write_is_refused(root, tmp_path, mode, why):
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(mode)
    with pytest.raises(UserError, match=why):
        create_app(root, cache_dir=cache)
    # one level down too: the views folder flask-caching reads
    cache.chmod(0o700)
    (cache / "views").mkdir(mode=0o700)
    (cache / "views").chmod(mode)
    with pytest.raises(UserError, match="views is writable by group or others"):
        create_app(root, cache_dir=cache)


def test_a_planted_link_is_refused(root, tmp_path):
    cache = tmp_path / "cache"
    (cache / "views").mkdir(parents=True)
    (cache / "views" / "2029f8ea").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="is a symlink"):
        create_app(root, cache_dir=cache)


def test_a_folder_above_writable_by_everyone_is_refused(root, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # anyone could rename the cache folder away and plant their own
    with pytest.raises(UserError, match="writable by everyone"):
        create_app(root, cache_dir=shared / "cache")
    shared.chmod(0o1777)  # like /tmp: the sticky bit stops that
    create_app(root, cache_dir=shared / "cache")


@pytest.mark.skipif(not IS_ROOT, reason="planting a file owned by another user needs root")
def test_a_file_planted_by_another_user_is_refused(root, tmp_path):
    cache = tmp_path / "cache"
    create_app(root, cache_dir=cache)
    planted = cache / "views" / "2029f8ea"
    planted.write_bytes(pickle.dumps("would run code"))
    os.chown(planted, 65534, 65534)
    with pytest.raises(UserError, match="belongs to another user"):
        create_app(root, cache_dir=cache)
    os.chown(cache, 65534, 65534)
    with pytest.raises(UserError, match="belongs to another user"):
        secure_cache_dir(cache)


def test_serve_refuses_an_unsafe_cache_in_one_line(root, tmp_path, monkeypatch, capsys):
    from trainmap.trainer import cli

    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)
    monkeypatch.setenv("TRAINMAP_CACHE_DIR", str(cache))
    assert cli.main(["serve", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refusing the cache folder" in err


@pytest.mark.parametrize(
    "url, password, refused",
    [
        ("redis://redis:6379/0", None, True),
        ("redis://10.0.0.5:6379/0", None, True),
        ("redis://redis:6379/0", "s3cret", False),
        ("redis://:s3cret@redis:6379/0", None, False),
        ("redis://127.0.0.1:6379/0", None, False),
        ("redis://localhost:6379/0", None, False),
        ("redis://[::1]:6379/0", None, False),
        ("unix:///run/redis.sock", None, False),
        ("http://redis:6379", "s3cret", True),
        ("redis://redis:notaport/0", "s3cret", True),
    ],
)
def test_redis_needs_a_password_unless_on_loopback(url, password, refused):
    if refused:
        with pytest.raises(UserError):
            check_redis(url, password)
    else:
        check_redis(url, password)


def test_create_app_refuses_an_open_redis(root, tmp_path, monkeypatch):
    monkeypatch.delenv("TRAINMAP_CACHE_REDIS_PASSWORD", raising=False)
    with pytest.raises(UserError, match="without a password"):
        create_app(root, cache_dir=tmp_path / "cache", redis_url="redis://cache.example:6379/0")
    monkeypatch.setenv("TRAINMAP_CACHE_REDIS_PASSWORD", "s3cret")
    app = create_app(root, cache_dir=tmp_path / "cache", redis_url="redis://cache.example:6379/0")
    from trainmap.app import data

    with app.server.app_context():  # the client is made, not connected: no Redis needed
        client = data.cache.cache._write_client
    assert client.connection_pool.connection_kwargs["password"] == "s3cret"


def test_compose_keeps_redis_private_and_password_protected():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    redis, dashboard = compose["services"]["redis"], compose["services"]["dashboard"]
    assert "ports" not in redis and "expose" not in redis
    assert redis["networks"] == ["cache"] and compose["networks"]["cache"]["internal"] is True
    assert "cache" in dashboard["networks"]
    command = redis["command"]
    secret = command[command.index("--requirepass") + 1]
    assert secret.startswith("${TRAINMAP_CACHE_REDIS_PASSWORD:?")  # compose stops when unset
    assert dashboard["environment"]["TRAINMAP_CACHE_REDIS_PASSWORD"] == secret
