"""The built image run under podman as Kubernetes runs it, against a real Valkey: a session
saved through it, its process and files, its health check, the proxy sidecar's nginx, and a
graceful stop."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import redis
import requests

from localservers.ports import free_port
from localservers.valkey import Valkey
from localservers.waits import wait_until
from tests.support import csrf_token, listed_messages, session_keys

from .image import UID, Build, Running, run_container

# Every test here shares the session's one build: xdist keeps them on one worker.
pytestmark = pytest.mark.xdist_group("image")


@pytest.fixture(scope="module")
def container(image_build: Build, shared_valkey: Valkey) -> Iterator[Running]:
    """One running container shared by the tests that only look at it."""
    with run_container(image_build, shared_valkey) as running:
        yield running


def test_container_serves_a_session_from_redis(container: Running, shared_valkey: Valkey) -> None:
    health = requests.get(f"{container.url}/healthz", timeout=5)
    assert health.json() == {"status": "ok"}

    def ready() -> bool:
        return requests.get(f"{container.url}/readyz", timeout=10).json()["redis"] == "ok"

    # A probe answers for one moment: on a loaded machine one PING may miss its short timeout.
    wait_until(ready, 60, "/readyz to report Redis ok")

    browser = requests.Session()
    page = browser.get(f"{container.url}/", timeout=5)
    assert page.status_code == 200
    assert "Save Message" in page.text
    token = csrf_token(page.text)
    text = f"saved through the image {secrets.token_hex(4)}"
    saved = browser.post(
        f"{container.url}/persistMessage",
        data={"message": text, "csrf_token": token},
        timeout=5,
    )
    assert saved.status_code == 200
    assert saved.history[0].status_code == 303
    assert text in listed_messages(saved.text)
    assert saved.headers["X-Served-By"] == "image-test"
    # The message lives in Redis, not in the container.
    with redis.Redis(host=shared_valkey.host, port=shared_valkey.port) as client:
        assert len(session_keys(client)) == 1


def test_container_runs_gunicorn_as_pid1_non_root_without_compilers(container: Running) -> None:
    assert container.exec("id", "-u").stdout.strip() == UID
    pid1 = container.exec("cat", "/proc/1/cmdline").stdout.split("\0")
    assert pid1[:2] == ["/opt/venv/bin/python3", "/opt/venv/bin/gunicorn"], pid1
    for compiler in ("gcc", "cc", "make"):
        assert container.exec("sh", "-c", f"command -v {compiler}").returncode != 0
    # .dockerignore and the COPY lines: only the app and its gunicorn config are in /app.
    listing = container.exec("find", "/app", "-mindepth", "1", "-maxdepth", "1").stdout.split()
    assert sorted(listing) == ["/app/app", "/app/gunicorn.conf.py", "/app/nginx.conf"]
    assert container.exec("find", "/app", "-name", "__pycache__").stdout.strip() == ""
    assert container.exec("touch", "/app/x").returncode != 0
    assert container.exec("touch", "/tmp/x").returncode == 0


def test_healthcheck_command_detects_up_and_down(container: Running) -> None:
    """The image's own HEALTHCHECK command, pointed at this run's port (it names 8080)."""
    check = container.build.inspect["Healthcheck"]["Test"][1:]
    port = container.url.rsplit(":", 1)[1]
    up = [part.replace("127.0.0.1:8080", f"127.0.0.1:{port}") for part in check]
    down = [part.replace("127.0.0.1:8080", f"127.0.0.1:{free_port()}") for part in check]
    assert up != check
    assert container.exec(*up).returncode == 0
    assert container.exec(*down).returncode != 0


def test_the_image_holds_the_proxy_sidecars_nginx_and_config(container: Running) -> None:
    """The pod's `proxy` sidecar runs `nginx -c /app/nginx.conf` from this image, as the same
    non-root user on a read-only root; /tmp/nginx is its emptyDir there."""
    check = container.exec("sh", "-c", "mkdir -p /tmp/nginx && nginx -t -c /app/nginx.conf")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "test is successful" in check.stderr


def test_sigterm_stops_gracefully_and_nothing_wrote_to_the_root_fs(
    image_build: Build, shared_valkey: Valkey
) -> None:
    """A container of its own, since it stops it. Exit 0 means gunicorn (PID 1) got SIGTERM
    and shut down; a shell in between would swallow it and be killed (137) after the timeout."""
    with run_container(image_build, shared_valkey) as container:
        image_build.podman("stop", "--time", "30", container.name, timeout=60)
        code = image_build.podman("inspect", "--format", "{{.State.ExitCode}}", container.name)
        logs = container.logs()
    assert code.strip() == "0", logs
    assert "Read-only file system" not in logs, logs
