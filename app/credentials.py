"""How the app proves who it is to Redis: a password (an AUTH token, or an RBAC user's password),
or short-lived IAM tokens signed with the pod's own AWS credentials.

With ``REDIS_AUTH=iam`` no Redis secret exists anywhere: every new connection authenticates as
the ElastiCache user ``REDIS_USERNAME`` with a token that is a SigV4-presigned ``connect``
request, signed by botocore with whatever credentials its chain finds (on EKS, the role that
Pod Identity hands the pod). ElastiCache accepts a token for 15 minutes and closes an
IAM-authenticated connection 12 hours after it authenticated; the two classes here deal with
each limit:

* ``IamCredentialProvider`` (redis-py's public ``CredentialProvider``), which redis-py asks for
  credentials on every connect and reconnect, of one primary's pool, a cluster's node pools
  and single-connection clients alike. It signs a token, keeps it for TOKEN_REUSE_SECONDS and
  then signs a fresh one, so a token handed out normally has minutes left.
* ``ConnectionRecycler``, which drops a worker's connections (``redis_client.RedisClient.reset``)
  once every RECYCLE_SECONDS, after a request, when none is in use; the next command reconnects
  with a fresh token. Why drop rather than re-AUTH on a timer: redis-py offers re-AUTH only
  for its streaming providers, from a background thread, and the tracked-read connection
  (nodes.NodeConnection) is read outside redis-py's own locks, so an AUTH from another thread
  could take its reply. A dropped connection costs one reconnect per connection every
  ~11 hours. A worker that sat idle past the limit finds its connections closed by the
  server: redis-py's health check (a PING before using a connection idle for more than
  connection.HEALTH_CHECK_INTERVAL_SECONDS) notices and reconnects before the command.

What a failing credential source (the Pod Identity agent down, or hanging) may cost. The token
is signed inside redis-py's connect, in the request that needs the connection, with one thread
per worker: whatever signing waits for, that worker and every probe queued behind it wait too
(the kubelet gives up on a probe after 3 s). So:

* the agent is asked once per signing, with a 1 s timeout (AGENT_TIMEOUT_SECONDS; it answers a
  pod on its own node in milliseconds): botocore's container provider, which would try 3 times
  with 2 s timeouts and a 1 s pause after each (9 s for a hanging agent, and it ignores
  AWS_METADATA_SERVICE_TIMEOUT and _NUM_ATTEMPTS), is replaced in the session made here;
* a re-sign that fails while the cached token still has life left is no failure: the cached
  token is handed out until it is TOKEN_USABLE_SECONDS old (a minute short of ElastiCache's 15,
  for clock skew and the connect itself), and the agent is asked again no more than once per
  RESIGN_RETRY_SECONDS meanwhile; with no usable token the error is raised at once;
* redis-py's retry does not retry an authentication failure (connection.py), which would have
  signed again, and waited again, twice more per connection.

Signing stays in redis-py's connect rather than in a background thread that keeps a token
ready: connections are made rarely (a worker's few, after a drop, every ~11 hours), a thread
per worker would have to be started after gunicorn's fork and would keep asking the agent of an
idle pod, and the bounds above already cap what a connect can wait. A worker that cannot sign
at all answers 503 (with Retry-After) for requests that need a new connection, and recovers
on the first connect after the agent answers again, without a restart.

The token follows AWS's redis-py example ("Authenticating with IAM", ElastiCache User Guide):
botocore's ``RequestSigner.generate_presigned_url`` for ``GET http://<cache name>/?Action=
connect&User=<user id>`` (plus ``&ResourceType=ServerlessCache`` for Serverless), valid 900 s,
with the scheme removed.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import botocore.session
from botocore.credentials import ContainerProvider
from botocore.exceptions import BotoCoreError
from botocore.model import ServiceId
from botocore.signers import RequestSigner
from botocore.utils import ContainerMetadataFetcher
from flask import Flask
from redis import CredentialProvider
from redis.exceptions import AuthenticationError

from .config import Settings

# ElastiCache accepts a token for at most 15 minutes after it was signed.
TOKEN_LIFETIME_SECONDS = 900
# Reuse a token for 10 minutes: every AUTH then carries one with at least 5 minutes left, a
# margin for clock skew and for a connect that retries.
TOKEN_REUSE_SECONDS = 600
# When signing a new one fails, the cached token is still handed out until it is 14 minutes old,
# and signing is tried again at most every 30 s meanwhile (see the module docstring).
TOKEN_USABLE_SECONDS = 840
RESIGN_RETRY_SECONDS = 30
# One attempt of at most 1 s at the Pod Identity agent per signing (see the module docstring).
AGENT_TIMEOUT_SECONDS = 1
# ElastiCache closes an IAM-authenticated connection 12 hours after its AUTH; drop ours after
# 11, less a random part of an hour so that a fleet started together does not reconnect in step.
RECYCLE_SECONDS = 11 * 3600
RECYCLE_JITTER_SECONDS = 3600

log = logging.getLogger(__name__)

# Monotonic seconds; tests replace it to move time forward.
clock: Callable[[], float] = time.monotonic


class IamAuthError(AuthenticationError):
    """No token could be signed (no AWS credentials, or their source failed). A redis-py
    error, so that redis-py closes the half-open connection and the app answers 503."""


def credential_options(settings: Settings) -> dict[str, Any]:
    """The redis-py client options that authenticate as ``settings`` say (connection.connect)."""
    if settings.redis_auth == "iam":
        return {"credential_provider": IamCredentialProvider(settings)}
    return {"username": settings.redis_username, "password": settings.redis_auth_token}


def refusal(settings: Settings, exc: Exception) -> str:
    """The one line that stops start-up when Redis refuses the app's credentials."""
    where = f"Redis at {settings.redis_host}:{settings.redis_port}"
    if isinstance(exc, IamAuthError):
        return f"REDIS_AUTH=iam, but {exc}"
    if settings.redis_auth == "iam":
        return (
            f"{where} refused IAM authentication as user {settings.redis_username!r} ({exc}): "
            f"the pod's role (its Pod Identity association) must allow elasticache:Connect on "
            f"cache {settings.redis_iam_cache_name!r} and on that user, and the user must exist "
            "with authentication mode iam in the cache's user group"
        )
    who = settings.redis_username or "the default user"
    return f"{where} refused {who} ({exc}): check REDIS_USERNAME and REDIS_AUTH_TOKEN"


def sign_token(settings: Settings, session: botocore.session.Session) -> str:
    """An ElastiCache IAM authentication token for ``settings``, signed now with the session's
    credentials (AWS's redis-py example, see the module docstring)."""
    credentials = session.get_credentials()
    if credentials is None:
        raise IamAuthError(
            "botocore found no AWS credentials to sign an ElastiCache token with: on EKS, "
            "the pod's service account needs a Pod Identity association"
        )
    query = {"Action": "connect", "User": settings.redis_username}
    if settings.redis_iam_serverless:
        query["ResourceType"] = "ServerlessCache"
    signer = RequestSigner(
        ServiceId("elasticache"),
        settings.aws_region,
        "elasticache",
        "v4",
        credentials,
        session.get_component("event_emitter"),
    )
    url = signer.generate_presigned_url(
        {
            "method": "GET",
            "url": f"http://{settings.redis_iam_cache_name}/?{urlencode(query)}",
            "body": {},
            "headers": {},
            "context": {},
        },
        operation_name="connect",
        expires_in=TOKEN_LIFETIME_SECONDS,
        region_name=settings.aws_region,
    )
    return url.removeprefix("http://")


class _AgentFetcher(ContainerMetadataFetcher):
    """botocore's fetcher of container credentials (the Pod Identity agent), with one attempt
    of at most AGENT_TIMEOUT_SECONDS and no pause after it."""

    TIMEOUT_SECONDS = AGENT_TIMEOUT_SECONDS
    RETRY_ATTEMPTS = 1

    def __init__(self) -> None:
        super().__init__(sleep=lambda _seconds: None)


def aws_session() -> botocore.session.Session:
    """A botocore session whose credential chain asks the Pod Identity agent (or ECS's
    endpoint) once with a short timeout, and the EC2 instance metadata likewise."""
    session = botocore.session.get_session()
    # Read when the credential chain is made (below): the instance metadata provider's own.
    session.set_config_variable("metadata_service_timeout", AGENT_TIMEOUT_SECONDS)
    session.set_config_variable("metadata_service_num_attempts", 1)
    resolver = session.get_component("credential_provider")
    resolver.providers = [
        ContainerProvider(fetcher=_AgentFetcher())
        if provider.METHOD == ContainerProvider.METHOD
        else provider
        for provider in resolver.providers
    ]
    return session


class IamCredentialProvider(CredentialProvider):
    """The ElastiCache user and a token signed at most TOKEN_REUSE_SECONDS ago, or, while a new
    one cannot be signed, one signed less than TOKEN_USABLE_SECONDS ago."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        # One botocore session per provider, made in the process that uses it: a session
        # caches its credentials and an HTTP connection to their source (the Pod Identity
        # agent), which processes must not share across gunicorn's fork.
        self._session = aws_session()
        self._lock = threading.Lock()
        self._token: str | None = None
        self._signed_at = 0.0
        self._failed_at: float | None = None  # the last failed re-sign, while a token is usable

    def get_credentials(self) -> tuple[str, str]:
        with self._lock:
            return self._settings.redis_username or "", self._current(clock())

    def _current(self, now: float) -> str:
        token, age = self._token, now - self._signed_at
        if token is not None and age < TOKEN_REUSE_SECONDS:
            return token
        usable = token if age < TOKEN_USABLE_SECONDS else None
        failed = self._failed_at
        if usable is not None and failed is not None and now - failed < RESIGN_RETRY_SECONDS:
            return usable  # signing failed moments ago: the agent is not asked again yet
        try:
            token = sign_token(self._settings, self._session)
        except (BotoCoreError, IamAuthError) as exc:  # the credentials' source failed
            if usable is None:
                if isinstance(exc, IamAuthError):
                    raise
                raise IamAuthError(f"AWS credentials could not be loaded: {exc}") from exc
            self._failed_at = now
            log.warning(
                "signing a new IAM token failed (%s): using the one signed %d s ago", exc, age
            )
            return usable
        self._token, self._signed_at, self._failed_at = token, now, None
        return token


class ConnectionRecycler:
    """Calls ``reset`` (which drops every connection) after the first request that ends more
    than RECYCLE_SECONDS (less jitter) after the previous reset."""

    def __init__(self, reset: Callable[[], None]) -> None:
        self._reset = reset
        self._due = clock() + RECYCLE_SECONDS - random.uniform(0, RECYCLE_JITTER_SECONDS)  # noqa: S311 - spreading, not secrecy

    def after_request(self, _exc: BaseException | None = None) -> None:
        now = clock()
        if now >= self._due:
            self._reset()
            self._due = now + RECYCLE_SECONDS - random.uniform(0, RECYCLE_JITTER_SECONDS)  # noqa: S311


def init_app(app: Flask, settings: Settings, reset: Callable[[], None]) -> None:
    """With IAM authentication, recycle the connections after requests (see the docstring)."""
    if settings.redis_auth != "iam":
        return
    recycler = ConnectionRecycler(reset)
    app.extensions["connection_recycler"] = recycler
    app.teardown_request(recycler.after_request)
