# Message app image: Flask + gunicorn, sessions in Redis/ElastiCache.
# Build: docker build -t message-app .   (or: podman build / buildah bud --format docker)
#
# Base pinned by tag, not digest: the tag fixes the CPython minor (3.13, supported until 2029)
# and the Debian release (bookworm), while still picking up Python patch and Debian security
# rebuilds. Pin a digest (python:3.13-slim-bookworm@sha256:...) in a registry-connected pipeline
# where Renovate/Dependabot can keep it fresh; it cannot be resolved or checked offline here.

# ---- builder: resolve and install the runtime dependencies into a self-contained venv ----
FROM python:3.13-slim-bookworm AS builder

WORKDIR /src
# Only the runtime lock: this layer (the slow one) is rebuilt when the dependencies change,
# not on every code change - the same aim as the original's layered Spring Boot jar.
COPY requirements/runtime.txt ./
# `python3 -m venv` works whether the base keeps Python in /usr/local/bin (official image) or
# /usr/bin. The lock (requirements/lock makes it from pyproject.toml's ranges) pins every
# package with its hashes, so every build installs the same, verified files; wheels only, so
# nothing is compiled. pip itself is removed from the venv: nothing installs packages at runtime.
# botocore's service models (22 MB, one folder per AWS service) go too: the app only signs
# ElastiCache IAM tokens and fetches its role's credentials, which read none of them (the
# top-level endpoint and partition files stay).
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --only-binary=:all: \
       --require-hashes -r runtime.txt \
    && /opt/venv/bin/pip uninstall --yes pip \
    && find /opt/venv/lib/python3*/site-packages/botocore/data -mindepth 1 -maxdepth 1 -type d \
       -exec rm -rf {} +

# ---- runtime: base + venv + app code; no compilers, no pip cache, no build files ----
FROM python:3.13-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="message-app" \
      org.opencontainers.image.description="Stateful Flask message app with sessions in Redis (EKS + ElastiCache sample)" \
      org.opencontainers.image.licenses="MIT-0"

# The venv's bin first, so `gunicorn` and `python` are the venv's own, wherever the base keeps
# its interpreter. Unbuffered output: JSON log lines reach `kubectl logs` immediately.
# No bytecode writes: the root filesystem is read-only in Kubernetes (site-packages already
# carries .pyc files compiled by pip at build time).
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# A fixed numeric UID/GID so Kubernetes `runAsNonRoot` can verify it without /etc/passwd;
# --no-log-init avoids a huge sparse lastlog file for a high UID.
RUN groupadd --gid 10001 app \
    && useradd --no-log-init --uid 10001 --gid 10001 --home-dir /nonexistent \
       --shell /usr/sbin/nologin app

# nginx for the pod's `proxy` sidecar, which runs this same image with nginx.conf in front of
# gunicorn (k8s/deployment.yaml): one image to build, scan and pull, the proxy's settings
# versioned with the app. nginx-light is Debian's smallest build; versions follow the base's
# Debian release like the rest of its packages, hence no pin.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends nginx-light \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

COPY --from=builder /opt/venv /opt/venv

# App code last: a code change rebuilds only these small layers. Files stay root-owned, so the
# app user cannot modify its own code even where the root filesystem is writable.
WORKDIR /app
COPY gunicorn.conf.py nginx.conf ./
COPY app/ ./app/

USER 10001:10001
EXPOSE 8080

# For docker/podman/compose only (Kubernetes uses the Deployment's probes). Liveness only:
# /healthz never touches Redis. No curl in the slim image, so the venv's Python does the GET.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=3)"]

# Exec form: gunicorn is PID 1 and receives SIGTERM directly for its graceful shutdown
# (graceful_timeout in gunicorn.conf.py). The config binds 0.0.0.0:8080 and puts the worker
# heartbeat files in /dev/shm, so nothing is written to the root filesystem.
CMD ["gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"]
