"""What the pod's nginx sidecar takes from the app's settings, written at its start:
``python -m app.proxy > /tmp/nginx/limits.conf``, which nginx.conf includes.

- The request body limits: nginx must refuse exactly the bodies the app would refuse
  (``Settings.max_content_length``, derived from MESSAGE_MAX_LENGTH) and hold every body it
  accepts in memory.
- How long an idle client connection stays open (PROXY_KEEPALIVE_SECONDS), which depends on
  the load balancer in front of the pod.
- The proxies whose X-Forwarded-For and X-Forwarded-Proto nginx believes: FORWARDED_ALLOW_IPS,
  the list gunicorn and the app's rate limits believe (the ALB's subnets with the ALB; loopback
  alone behind the NLB, whose peer is the client itself). Any wider list would let whatever
  else reaches the pod (another pod, anything in the VPC) choose the address its rate limits
  and connection limit count.
- Whether nginx's own pages (413, 429, 502, ...) carry HSTS over plain HTTP: with
  SESSION_COOKIE_SECURE, as the app's pages do (TLS ends at the load balancer).

A constant in nginx.conf would drift from the settings, and nginx reads no environment
variable in these directives. The sidecar runs the app's image, so app/config.py serves both.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .config import ConfigError, Settings, body_cap
from .hooks import HSTS


def limits(cap: int) -> str:
    """nginx directives (http context) for a body cap of ``cap`` bytes."""
    return (
        "# Written at the proxy's start by `python -m app.proxy` (app/proxy.py) from\n"
        "# MESSAGE_MAX_LENGTH: the app's own body cap. Larger bodies are refused (413) from\n"
        "# their header; every body accepted fits one buffer, so none is written to disk.\n"
        f"client_max_body_size {cap};\n"
        f"client_body_buffer_size {cap};\n"
    )


def trusted_proxies(addresses: Sequence[str]) -> str:
    """nginx directives (http context) believing the forwarded headers from ``addresses``
    (FORWARDED_ALLOW_IPS: addresses, networks, or "*" for any) and from nowhere else."""
    anyone = "*" in addresses
    networks = ["0.0.0.0/0", "::/0"] if anyone else list(dict.fromkeys(addresses))
    lines = [
        "# From FORWARDED_ALLOW_IPS: the peers whose X-Forwarded-For (the client's address, for",
        "# limit_conn and the logs) and X-Forwarded-Proto nginx believes.",
        *(f"set_real_ip_from {network};" for network in networks),
        "geo $realip_remote_addr $from_trusted_proxy {",
        # (geo's default is its 0.0.0.0/0 entry: naming that network too, nginx warns.)
        f"    default {1 if anyone else 0};",
        *(f"    {network} 1;" for network in ([] if anyone else networks)),
        "}",
    ]
    return "\n".join(lines) + "\n"


def hsts(secure_cookies: bool) -> str:
    """$add_hsts: the HSTS header where the app sends it (app/hooks.py) and the response lacks
    it, for nginx's own pages: over HTTPS ($forwarded_proto, nginx.conf), and with
    SESSION_COOKIE_SECURE over plain HTTP too (TLS may end at a load balancer that says
    nothing)."""
    value = f'"{HSTS[1]}"'
    lines = [
        "# From SESSION_COOKIE_SECURE: HSTS on nginx's own pages as on the app's.",
        'map "$forwarded_proto:$upstream_http_strict_transport_security" $add_hsts {',
        f'    "https:" {value};',
        *([f'    "http:" {value};'] if secure_cookies else []),
        '    default "";',
        "}",
    ]
    return "\n".join(lines) + "\n"


def keepalive(seconds: int) -> str:
    """nginx's idle timeout for client connections (PROXY_KEEPALIVE_SECONDS): it depends on the
    load balancer in front (k8s/config.env, k8s/components/alb say why)."""
    return f"# From PROXY_KEEPALIVE_SECONDS.\nkeepalive_timeout {seconds}s;\n"


# The settings read here: the sidecar is given these and no other (k8s/deployment.yaml).
SETTINGS = (
    "message_max_length",
    "forwarded_allow_ips",
    "proxy_keepalive_seconds",
    "session_cookie_secure",
)


def main() -> None:
    try:
        length, proxies, idle, secure = (Settings.one_from_env(name) for name in SETTINGS)
    except ConfigError as exc:
        sys.exit(f"configuration error: {exc}")
    sys.stdout.write(
        limits(body_cap(length)) + trusted_proxies(proxies) + keepalive(idle) + hsts(secure)
    )


if __name__ == "__main__":
    main()
