"""The container image as the tests build and run it, without Docker (tests/infra/test_image_*).

There is no Docker engine and no registry access here, so the official base image named in the
Dockerfile's FROM lines cannot be pulled. It is satisfied with a stand-in: a debootstrapped Debian
bookworm (minbase plus Debian's python3, python3-venv and python3-pip, trimmed of docs and apt
caches the way Debian's slim images are), committed into isolated container storage under
exactly the name the Dockerfile uses. The stand-in is honest for the base only: it carries
Debian's Python 3.11 in /usr/bin where the official image has CPython 3.13 in /usr/local/bin; its
size (~150 MB) is close to the official slim image's. Everything the Dockerfile itself does runs
for real with buildah (chroot isolation): the venv built from the runtime lock's hashed pins by
pip against the package index, the numeric user, the layer order, the exec-form CMD. The image
runs under podman (runc, host network, read-only root filesystem, /tmp the only writable path).

One build serves the whole session (``tests/infra/conftest.py``'s ``image_build``): it is the
suite's most expensive step.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from localservers.ports import free_port
from localservers.valkey import Valkey
from tests.support import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
REPORT = REPO_ROOT / "build" / "image-report.json"
STANDIN_CACHE = Path("/tmp/flask-eks-sessions-standin")

SUITE = "bookworm"
STANDIN_PACKAGES = "python3,python3-venv,python3-pip,python-is-python3"
# The official image's environment, so that ENV PATH="/opt/venv/bin:${PATH}" expands the same.
STANDIN_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}
IMAGE = "localhost/message-app:test"
UID = "10001"
# The target for the whole image, and a bound on what the Dockerfile adds to its base:
# python:3.13-slim-bookworm is about 125-150 MB unpacked (not measurable offline), so staying
# under 50 MB keeps the real image under 200 MB whatever the stand-in's exact size.
IMAGE_BYTES_TARGET = 200_000_000
ADDED_BYTES_BUDGET = 50_000_000
STEP_TIMEOUT = 600

REQUIRED_TOOLS = ("buildah", "podman", "runc", "debootstrap")


def skip_without_container_tools() -> None:
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(
            f"needs {', '.join(missing)} (apt-get install -y buildah podman runc debootstrap)"
        )
    if os.geteuid() != 0:
        pytest.skip("debootstrap and buildah's chroot isolation need root")


def run(cmd: list[str], *, timeout: float = STEP_TIMEOUT, **kwargs: object) -> str:
    """Run a command; on failure show its output, which is the only clue to what went wrong."""
    proc = attempt(cmd, timeout=timeout, **kwargs)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}"
            f"\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc.stdout


def attempt(
    cmd: list[str], *, timeout: float = STEP_TIMEOUT, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )


def base_images(dockerfile: str) -> list[str]:
    """The external images named in FROM lines (stage names excluded), as written."""
    bases: list[str] = []
    stages: set[str] = set()
    for match in re.finditer(
        r"^FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", dockerfile, re.I | re.M
    ):
        image, stage = match.group(1), match.group(2)
        if image not in stages and image not in bases:
            bases.append(image)
        if stage:
            stages.add(stage)
    return bases


def fully_qualified(image: str) -> str:
    """Docker's normalisation of a short name, so buildah finds the stand-in under it."""
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return image
    return f"docker.io/{image}" if rest else f"docker.io/library/{image}"


def _debian_mirror() -> str:
    """The Debian mirror apt on this machine already uses: the only one reachable here."""
    sources = Path("/etc/apt/sources.list.d")
    for path in sorted(sources.glob("*.sources")) if sources.is_dir() else []:
        for stanza in path.read_text().split("\n\n"):
            fields = dict(
                line.split(":", 1) for line in stanza.splitlines() if re.match(r"^\w[\w-]*:", line)
            )
            suites = fields.get("Suites", "").split()
            if "deb" in fields.get("Types", "").split() and SUITE in suites:
                return fields["URIs"].split()[0]
    for path in [Path("/etc/apt/sources.list"), *sorted(sources.glob("*.list"))]:
        if path.is_file():
            for line in path.read_text().splitlines():
                words = line.split()
                if len(words) >= 3 and words[0] == "deb" and words[-2] == SUITE:
                    return words[-3]
    return "http://deb.debian.org/debian"


def _trim_like_debian_slim(rootfs: Path) -> None:
    """What the official python:*-slim image leaves out (its debian:*-slim base excludes docs,
    manuals and translations; apt's package lists and downloaded .debs are removed), so the
    stand-in's size and every vfs/overlay copy of it are closer to the real base."""
    for pattern in (
        "usr/share/doc/*",
        "usr/share/man/*",
        "usr/share/info/*",
        "usr/share/locale/*",
        "usr/share/lintian/*",
        "var/lib/apt/lists/*",
        "var/cache/apt/*.bin",
        "var/cache/apt/archives/*.deb",
    ):
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def _standin_rootfs() -> tuple[Path, float | None]:
    """A debootstrapped root filesystem, cached under /tmp per recipe (debootstrap takes
    ~40 s). A lock and an atomic rename keep parallel runs from sharing a half-made tree; a
    finished tree is never deleted here, since another run may be copying it at any moment
    (the system's /tmp cleaning removes it). Returns the tree and how long debootstrap took
    (None when it came from the cache)."""
    mirror = _debian_mirror()
    recipe = f"{SUITE} {STANDIN_PACKAGES} {mirror} slim"
    key = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    cache = STANDIN_CACHE / key
    cache.mkdir(parents=True, exist_ok=True)
    rootfs = cache / "rootfs"
    with (cache / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (rootfs / "usr/bin/python3").exists():
            return rootfs, None
        # Half-made trees from interrupted runs: only the lock holder builds one, and that is us.
        for path in cache.glob("partial-*"):
            shutil.rmtree(path, ignore_errors=True)
        partial = cache / f"partial-{os.getpid()}"
        started = time.monotonic()
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={STANDIN_PACKAGES}",
                SUITE,
                str(partial),
                mirror,
            ]
        )
        _trim_like_debian_slim(partial)
        partial.rename(rootfs)
        return rootfs, time.monotonic() - started


def _storage_driver(root: Path, runroot: Path, env: dict[str, str]) -> str:
    """overlay where the kernel allows it (a cold build takes ~10 s instead of minutes: vfs
    copies the whole tree for every layer and container), else vfs, which works anywhere."""
    flags = ["--root", str(root), "--runroot", str(runroot), "--storage-driver", "overlay"]
    made = attempt(["buildah", *flags, "from", "scratch"], timeout=60, env=env)
    mounted = made.returncode == 0 and (
        attempt(["buildah", *flags, "mount", made.stdout.strip()], timeout=60, env=env).returncode
        == 0
    )
    attempt(["buildah", *flags, "rm", "--all"], timeout=60, env=env)
    if mounted:
        return "overlay"
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(runroot, ignore_errors=True)
    return "vfs"


@dataclass
class Build:
    """Isolated container storage with the built image, and what the build measured."""

    workdir: Path
    env: dict[str, str]
    base_images: list[str]
    driver: str = "vfs"
    runtime_lock: bytes = b""
    build_seconds: float = 0.0
    debootstrap_seconds: float | None = None
    build_log: str = ""
    inspect: dict = field(default_factory=dict)

    def storage_flags(self) -> list[str]:
        return [
            "--root",
            str(self.workdir / "storage"),
            "--runroot",
            str(self.workdir / "run"),
            "--storage-driver",
            self.driver,
        ]

    def buildah(self, *args: str, timeout: float = STEP_TIMEOUT) -> str:
        return run(["buildah", *self.storage_flags(), *args], timeout=timeout, env=self.env)

    def podman_cmd(self, *args: str) -> list[str]:
        return [
            "podman",
            *self.storage_flags(),
            "--tmpdir",
            str(self.workdir / "libpod"),
            "--volumepath",
            str(self.workdir / "volumes"),
            "--network-config-dir",
            str(self.workdir / "networks"),
            "--cgroup-manager=cgroupfs",
            "--events-backend=file",
            "--runtime",
            "runc",
            *args,
        ]

    def podman(self, *args: str, timeout: float = 120) -> str:
        return run(self.podman_cmd(*args), timeout=timeout, env=self.env)

    def bud(self, context: Path, tag: str) -> tuple[str, float]:
        """Build like `docker build`: layer cache on, Docker image format (OCI has no
        HEALTHCHECK). The host's CA bundle is bind-mounted into RUN steps only, so pip in the
        build trusts whatever the host trusts (a TLS-inspecting egress proxy in this sandbox);
        it is part of no layer."""
        volumes: list[str] = []
        cafile = ssl.get_default_verify_paths().cafile
        if cafile and Path(cafile).is_file():
            ca = Path(cafile).resolve()
            volumes = ["--volume", f"{ca}:/etc/ssl/certs/ca-certificates.crt:ro"]
        started = time.monotonic()
        log = self.buildah(
            "bud",
            "--isolation",
            "chroot",
            "--pull=never",
            "--layers",
            "--format",
            "docker",
            *volumes,
            "-f",
            str(context / "Dockerfile"),
            "-t",
            tag,
            str(context),
        )
        return log, time.monotonic() - started

    def image_bytes(self, image: str) -> int:
        return int(self.podman("image", "inspect", "--format", "{{.Size}}", image).strip())


@contextlib.contextmanager
def built_image(workdir: Path) -> Iterator[Build]:
    """The stand-in base and one real build of the repo's Dockerfile in isolated storage under
    ``workdir``; removed again at the end."""
    (workdir / "tmp").mkdir()
    env = {**os.environ, "TMPDIR": str(workdir / "tmp")}
    result = Build(workdir, env, base_images(DOCKERFILE.read_text()))
    try:
        result.driver = _storage_driver(workdir / "storage", workdir / "run", env)
        rootfs, result.debootstrap_seconds = _standin_rootfs()
        container = result.buildah("from", "scratch").strip()
        result.buildah("copy", "--quiet", container, f"{rootfs}/", "/")
        result.buildah(
            "config",
            *[arg for k, v in STANDIN_ENV.items() for arg in ("--env", f"{k}={v}")],
            "--cmd",
            "python3",
            container,
        )
        for base in result.base_images:
            result.buildah("commit", "--quiet", container, fully_qualified(base))
        result.buildah("rm", container)
        # What the build reads, for the rebuild test, even if someone edits the file meanwhile.
        result.runtime_lock = (REPO_ROOT / "requirements" / "runtime.txt").read_bytes()
        result.build_log, result.build_seconds = result.bud(REPO_ROOT, IMAGE)
        result.inspect = json.loads(result.podman("image", "inspect", IMAGE))[0]
        yield result
    finally:
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            result.buildah("rm", "--all")
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            result.buildah("umount", "--all")
        # Hundreds of MB of layers that pytest's kept temp dirs would otherwise hold on to.
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class Running:
    name: str
    url: str
    build: Build

    def exec(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        """A command inside the running container, as the image's (non-root) user."""
        return attempt(
            self.build.podman_cmd("exec", self.name, *cmd), timeout=60, env=self.build.env
        )

    def logs(self) -> str:
        """gunicorn logs to stdout and stderr; both matter."""
        proc = attempt(self.build.podman_cmd("logs", self.name), timeout=60, env=self.build.env)
        return proc.stdout + proc.stderr


@contextlib.contextmanager
def run_container(build: Build, valkey: Valkey) -> Iterator[Running]:
    """The image's own CMD, started the way Kubernetes runs it: read-only root, only /tmp
    writable (no podman extras on /run or /var/tmp). The listen address comes in through
    GUNICORN_CMD_ARGS because port 8080 on this shared host may be taken."""
    name = f"message-app-test-{os.getpid()}-{secrets.token_hex(3)}"
    port = free_port()
    build.podman(
        "run",
        "--detach",
        "--name",
        name,
        "--pull=never",
        "--no-healthcheck",
        "--network=host",
        "--read-only",
        "--read-only-tmpfs=false",
        "--tmpfs",
        "/tmp",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=4096:4096",
        "--env",
        "REDIS_HOST=127.0.0.1",
        "--env",
        f"REDIS_PORT={valkey.port}",
        "--env",
        f"SECRET_KEY={secrets.token_hex(32)}",
        "--env",
        "REPLICA_NAME=image-test",
        "--env",
        f"GUNICORN_CMD_ARGS=--bind 127.0.0.1:{port}",
        IMAGE,
    )
    running = Running(name, f"http://127.0.0.1:{port}", build)
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{running.url}/healthz", timeout=2).status_code == 200:
                    break
            state = build.podman("inspect", "--format", "{{.State.Status}}", name).strip()
            if state != "running" or time.monotonic() > deadline:
                pytest.fail(f"container {state}, /healthz never answered:\n{running.logs()}")
            time.sleep(0.25)
        yield running
    finally:
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            build.podman("rm", "--force", "--time", "5", name)
