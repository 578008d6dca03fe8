"""gunicorn settings for the message app: `gunicorn -c gunicorn.conf.py 'app:create_app()'`.

The values that vary come from the app's settings (app/config.py, read from the environment);
command-line flags (e.g. `--bind 127.0.0.1:9000`) and GUNICORN_CMD_ARGS override them.
"""

import sys

from app import metrics_dir
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

# Prometheus metrics summed over the workers: prometheus_client's multiprocess mode, where each
# worker writes its counts to files in a directory named before anything imports
# prometheus_client (app/metrics_dir.py); the master serves the sum, and folds each dead
# worker's files into one for all of them (app/metrics_server.py).
if _settings.metrics_port:
    _metrics_dir = metrics_dir.prepare(_settings)
    from app import metrics_server  # after the directory is named

    def when_ready(server):
        metrics_server.serve(_settings, _metrics_dir)

    def post_fork(server, worker):
        metrics_server.close_in_worker()

    def child_exit(server, worker):
        metrics_server.worker_exited(_metrics_dir, worker.pid)

    def on_exit(server):
        metrics_dir.remove()


# All interfaces inside a container: the pod IP is what the Service targets. In the Kubernetes
# pod, nginx (nginx.conf) owns that port and GUNICORN_BIND puts gunicorn on loopback behind it.
bind = [_settings.gunicorn_bind]
# One request at a time per process: the app is CPU-bound between sub-millisecond Redis calls,
# and the per-process Redis connections and cache were written for it. gthread with one thread
# keeps that, and unlike the sync worker keeps connections alive between requests, so nginx in
# front (nginx.conf) reuses a few loopback connections instead of opening one per request:
# measured, a quarter less CPU per page view for the pod. WEB_CONCURRENCY is the conventional
# knob; 2 fits a pod with a 1-CPU limit.
workers = _settings.web_concurrency
worker_class = "gthread"
threads = 1
# Longer than nginx's upstream keepalive_timeout (30 s): nginx closes an idle connection first,
# so it never sends a request on one gunicorn has just closed.
keepalive = 35
# Heartbeat files on a disk-backed overlay filesystem can stall workers; /dev/shm is memory.
worker_tmp_dir = str(metrics_dir.SHM) if metrics_dir.SHM.is_dir() else None
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
loglevel = _settings.log_level.lower()
# X-Forwarded-* are trusted only from the addresses in FORWARDED_ALLOW_IPS (default 127.0.0.1
# and ::1): set it to the load balancer's subnets, never "*" unless nothing but the load
# balancer can reach the pods. gunicorn would read the variable itself; given here, gunicorn
# and the app's rate limits (which read the client address behind these proxies) use one list.
forwarded_allow_ips = ",".join(_settings.forwarded_allow_ips)
# The scheme from X-Forwarded-Proto alone, the one header nginx sets (and the ALB sends).
# gunicorn's default also reads X-Forwarded-Ssl and X-Forwarded-Protocol, which nginx passes
# through from the client, and answers 400 to every request whose headers disagree: one client
# proxy adding X-Forwarded-Ssl: on over plain HTTP would get nothing but 400s.
secure_scheme_headers = {"X-FORWARDED-PROTO": "https"}
