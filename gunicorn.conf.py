"""gunicorn settings for the message app: `gunicorn -c gunicorn.conf.py 'app:create_app()'`.

Command-line flags (e.g. `--bind 127.0.0.1:9000`) and GUNICORN_CMD_ARGS override these.
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

# Prometheus metrics summed over the workers: prometheus_client's multiprocess mode, where
# each worker writes its counts to files in PROMETHEUS_MULTIPROC_DIR. It must be set before
# the app (and so prometheus_client) is imported. Memory-backed (/dev/shm, or the emptyDir
# the variable names) and emptied at start, so a restart never adds an old run's counts;
# the master serves the sum on METRICS_PORT (see app/metrics.py). METRICS_PORT=0: no metrics.
_METRICS_ON = os.environ.get("METRICS_PORT", "").strip() != "0"
# Once per master: gunicorn reads this file again on SIGHUP, and the workers it keeps, and
# the metrics server, go on using the directory as it is.
if _METRICS_ON and os.environ.get("_METRICS_MASTER_PID") != str(os.getpid()):
    os.environ["_METRICS_MASTER_PID"] = str(os.getpid())
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        _shm = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108 - a system path
        # Made here, so removed by on_exit.
        os.environ["_METRICS_OWN_DIR"] = tempfile.mkdtemp(prefix="gunicorn-metrics-", dir=_shm)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ["_METRICS_OWN_DIR"]
    for _stale in Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).glob("*.db"):
        _stale.unlink()

if _METRICS_ON:

    def when_ready(server):
        from app import metrics

        metrics.serve(server.cfg.bind, Settings.from_env().metrics_port)

    def child_exit(server, worker):
        from app import metrics

        metrics.worker_exited(worker.pid)

    def on_exit(server):
        if os.environ.get("_METRICS_OWN_DIR"):
            shutil.rmtree(os.environ["_METRICS_OWN_DIR"], ignore_errors=True)


# After PROMETHEUS_MULTIPROC_DIR is set (prometheus_client reads it on import).
from app.config import ConfigError, Settings  # noqa: E402
from app.connection import check_server  # noqa: E402
from app.logs import configure as configure_logs  # noqa: E402

# Check the app's configuration once, in the master, so that a bad value (or credentials
# Redis refuses) stops start-up with one line instead of a traceback from every worker.
try:
    _settings = Settings.from_env()
    configure_logs(_settings.log_level)  # check_server may log a warning: as JSON, like the rest
    check_server(_settings)
except ConfigError as exc:
    sys.exit(f"configuration error: {exc}")

# All interfaces inside a container: the pod IP is what the Service targets. In the Kubernetes
# pod, nginx (nginx.conf) owns that port and GUNICORN_BIND puts gunicorn on loopback behind it.
bind = [os.environ.get("GUNICORN_BIND") or "0.0.0.0:8080"]
# One request at a time per process: the app is CPU-bound between sub-millisecond Redis calls,
# and the per-process Redis connections and cache were written for it. gthread with one thread
# keeps that, and unlike the sync worker keeps connections alive between requests, so nginx in
# front (nginx.conf) reuses a few loopback connections instead of opening one per request:
# measured, a quarter less CPU per page view for the pod. WEB_CONCURRENCY is the conventional
# knob; 2 fits a pod with a 1-CPU limit.
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = 1
# Longer than nginx's upstream keepalive_timeout (30 s): nginx closes an idle connection first,
# so it never sends a request on one gunicorn has just closed.
keepalive = 35
# Heartbeat files on a disk-backed overlay filesystem can stall workers; /dev/shm is memory.
SHM = "/dev/shm"  # noqa: S108 - a fixed system path, not a temp file name
worker_tmp_dir = SHM if os.path.isdir(SHM) else None
timeout = 30
# On SIGTERM workers finish in-flight requests for up to this long; the pod's preStop sleep
# plus this stays below terminationGracePeriodSeconds (see k8s/deployment.yaml).
graceful_timeout = 20
# gunicorn 25+ opens a control socket under $HOME; nothing here uses it, and the container's
# root filesystem is read-only.
control_socket_disable = True
# JSON lines on stdout, for the app, gunicorn's errors and the access log alike.
logger_class = "app.logs.GunicornLogger"
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# X-Forwarded-* are trusted only from the addresses in FORWARDED_ALLOW_IPS (gunicorn's own
# variable, default 127.0.0.1): set it to the load balancer's subnets, never "*" unless
# nothing but the load balancer can reach the pods.
