"""gunicorn settings for the message app: `gunicorn -c gunicorn.conf.py 'app:create_app()'`.

Command-line flags (e.g. `--bind 127.0.0.1:9000`) and GUNICORN_CMD_ARGS override these.
"""

import os
import sys

from app.config import ConfigError, Settings
from app.connection import check_server
from app.logs import configure as configure_logs

# Check the app's configuration once, in the master, so that a bad value (or credentials
# Redis refuses) stops start-up with one line instead of a traceback from every worker.
try:
    _settings = Settings.from_env()
    configure_logs(_settings.log_level)  # check_server may log a warning: as JSON, like the rest
    check_server(_settings)
except ConfigError as exc:
    sys.exit(f"configuration error: {exc}")

# All interfaces inside a container: the pod IP is what the Service targets.
bind = ["0.0.0.0:8080"]
# Sync workers: the app is CPU-bound between sub-millisecond Redis calls, and one request per
# process keeps the per-process Redis connections and cache simple. WEB_CONCURRENCY is the
# conventional knob; 2 fits a pod with a 1-CPU limit.
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "sync"
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
