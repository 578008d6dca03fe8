"""IAM authentication to the cache, against real servers: redis-server over TLS (one primary)
and a Valkey cluster, each with an ACL user standing in for the ElastiCache IAM user.

What stands in for what: ElastiCache checks a SigV4 token where Redis checks a password, so
the token signer is replaced by one that hands out the user's current ACL password, and a
token "expiring" is the password being changed on the server (``ACL SETUSER ... resetpass``),
which, like ElastiCache, leaves connections that already authenticated alone. The time the
credential provider and the connection recycler read is a fake clock. ElastiCache closing
every IAM connection at 12 hours is ``CLIENT KILL USER``. The signer itself is checked
against AWS's algorithm in tests/unit/test_credentials.py; botocore's credential chain
against a stand-in Pod Identity agent below.
"""

from __future__ import annotations

import functools
import http.server
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import ClassVar

import botocore.session
import pytest
import redis

from app import connection, create_app, credentials, ratelimit
from app.config import Settings, Switch
from app.connection import connect
from localservers.gunicorn import Gunicorn
from localservers.waits import wait_until
from tests.support import listed_messages, replica_env, save
from tests.system.tls import TlsRedis

USER = "message-app"


REAL_SIGN_TOKEN = credentials.sign_token


class Tokens:
    """The stand-in signer and clock: ``sign_token`` hands out the current password. With
    ``via_agent``, it first signs a real token, which asks botocore's credential chain (the
    stand-in Pod Identity agent below), and fails as that does."""

    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.password = "first-token-0123456789"
        self.signed: list[str] = []
        self.via_agent = False

    def sign(self, settings: Settings, session: botocore.session.Session) -> str:
        if self.via_agent:
            REAL_SIGN_TOKEN(settings, session)
        self.signed.append(self.password)
        return self.password


@pytest.fixture
def tokens(monkeypatch: pytest.MonkeyPatch) -> Tokens:
    stand_in = Tokens()
    monkeypatch.setattr(credentials, "sign_token", stand_in.sign)
    monkeypatch.setattr(credentials, "clock", lambda: stand_in.now)
    return stand_in


def add_user(client: redis.Redis, password: str, *rules: str) -> None:
    client.execute_command(
        "ACL", "SETUSER", USER, "reset", "on", f">{password}", "~*", "&*", "+@all", *rules
    )


def change_password(client: redis.Redis, password: str) -> None:
    client.execute_command("ACL", "SETUSER", USER, "resetpass", f">{password}")


def connection_ids(client: redis.Redis) -> set[int]:
    listed = client.execute_command("CLIENT", "LIST")
    text = listed.decode() if isinstance(listed, bytes) else listed
    return {
        int(fields["id"])
        for fields in (
            dict(p.split("=", 1) for p in line.split() if "=" in p) for line in text.splitlines()
        )
        if fields.get("user") == USER
    }


def refused_logins(client: redis.Redis) -> list:
    return [entry for entry in client.execute_command("ACL", "LOG") if b"auth" in entry]


def refused_auths(client: redis.Redis) -> int:
    """How many AUTHs the server has refused (ACL LOG's entries count repeats)."""
    return sum(int(e["count"]) for e in client.acl_log() if e["reason"] == "auth")


def iam_settings(settings: Settings, **changes: object) -> Settings:
    """The settings init.sh gives the pods with IAM, TLS included, with ``changes``."""
    return replace(
        settings,
        redis_tls=True,
        redis_auth="iam",
        redis_username=USER,
        redis_iam_cache_name="fes-test",
        aws_region="eu-central-1",
        **changes,
    )


@pytest.fixture(params=[False, True], ids=["direct-reads", "tracked-reads"])
def iam_app(request, settings, tls_redis, trusts_the_test_ca, tokens) -> Iterator:
    admin = tls_redis.client()
    add_user(admin, tokens.password)
    app = create_app(
        iam_settings(settings, redis_port=tls_redis.port, redis_client_cache=request.param)
    )
    yield app, admin


def test_a_renewed_token_authenticates_new_connections_and_no_request_fails(iam_app, tokens):
    app, admin = iam_app
    browser = app.test_client()
    assert save(browser, "before").status_code == 303
    assert browser.get("/").status_code == 200  # every client of the app has connected
    first = connection_ids(admin)
    assert first

    # The token expires: the server takes only the new one from now on (ElastiCache: 15 min).
    tokens.password = "second-token-0123456789"
    change_password(admin, tokens.password)
    assert save(browser, "open connections keep working").status_code == 303
    assert connection_ids(admin) == first  # no connection was needed, none was made
    tokens.now += credentials.TOKEN_REUSE_SECONDS

    # New connections: one dropped (as by a network blip), and a burst of concurrent requests
    # that the pools meet with more connections.
    admin.execute_command("CLIENT", "KILL", "ID", min(first))

    def visit(n: int) -> int:
        other = app.test_client()
        return save(other, f"burst {n}").status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(visit, range(16))) == [303] * 16
    assert save(browser, "after").status_code == 303
    assert listed_messages(browser.get("/").get_data(as_text=True)) == [
        "before",
        "open connections keep working",
        "after",
    ]
    now = connection_ids(admin)
    assert now - first, "no new connection was made: the test proves nothing"
    assert (first - {min(first)}) <= now  # the old ones still serve
    assert refused_logins(admin) == []  # every new connection used the new token
    assert "second-token-0123456789" in tokens.signed


def test_connections_are_recycled_before_twelve_hours_without_a_failed_request(iam_app, tokens):
    app, admin = iam_app
    browser = app.test_client()
    assert save(browser, "one").status_code == 303
    first = connection_ids(admin)
    tokens.password = "eleven-hours-later-0123"
    change_password(admin, tokens.password)

    tokens.now += credentials.RECYCLE_SECONDS  # past the recycler's due time, jitter or not
    assert browser.get("/").status_code == 200  # its teardown drops every connection
    assert connection_ids(admin).isdisjoint(first)
    assert save(browser, "two").status_code == 303
    assert listed_messages(browser.get("/").get_data(as_text=True)) == ["one", "two"]
    assert connection_ids(admin) and connection_ids(admin).isdisjoint(first)
    assert refused_logins(admin) == []


def test_the_server_closing_every_iam_connection_fails_no_request(iam_app, tokens):
    """What ElastiCache does to a connection 12 hours after its AUTH, if it is still open."""
    app, admin = iam_app
    browser = app.test_client()
    assert save(browser, "one").status_code == 303
    tokens.password = "twelve-hours-later-0123"
    change_password(admin, tokens.password)
    tokens.now += credentials.TOKEN_REUSE_SECONDS
    admin.execute_command("CLIENT", "KILL", "USER", USER)
    assert save(browser, "two").status_code == 303
    assert listed_messages(browser.get("/").get_data(as_text=True)) == ["one", "two"]
    assert refused_logins(admin) == []


def test_the_cluster_client_authenticates_every_node_with_renewed_tokens(
    settings, valkey_cluster, tokens
):
    """The same provider in every node's pool of the cluster client (connection.connect with
    cluster=True; the test cluster speaks plain text, hence ssl=False)."""
    nodes = [node.client() for node in valkey_cluster.nodes]
    for node in nodes:
        add_user(node, tokens.password)
    client = connect(
        iam_settings(settings, redis_port=valkey_cluster.port), cluster=True, ssl=False
    )
    keys = [f"session:{{{n}}}" for n in range(30)]  # spread over every shard
    for key in keys:
        client.set(key, "first")
    tokens.password = "cluster-second-0123456"
    for node in nodes:
        change_password(node, tokens.password)
    tokens.now += credentials.TOKEN_REUSE_SECONDS
    for node in nodes:
        node.execute_command("CLIENT", "KILL", "USER", USER)
    for key in keys:
        client.set(key, "second")
    assert {client.get(key) for key in keys} == {b"second"}
    assert all(connection_ids(node) for node in (n.client() for n in valkey_cluster.primaries()))
    assert [refused_logins(node) for node in nodes] == [[]] * len(nodes)
    client.close()


class Agent(http.server.BaseHTTPRequestHandler):
    """The EKS Pod Identity agent's credentials endpoint, as botocore's container provider
    calls it: GET with the projected token file's content in Authorization.

    ``failing``: "" answers, "500" answers 500 (the agent restarting), "hang" answers nothing
    until ``released`` (a stuck agent). ``expires_in``: seconds the credentials it hands out
    live, None for years; under 10 minutes, botocore asks it again at every signing (its
    mandatory refresh), as it does near the end of the role session's life."""

    token = "projected-service-account-token"
    calls: ClassVar[list[str]] = []
    failing: ClassVar[str] = ""
    expires_in: ClassVar[float | None] = None
    released: ClassVar[threading.Event] = threading.Event()

    def do_GET(self) -> None:
        self.calls.append(self.headers.get("Authorization", ""))
        if self.failing == "hang":
            self.released.wait(30)
        if self.failing:
            self.send_error(500)
            return
        if self.headers.get("Authorization") != self.token:
            self.send_error(403)
            return
        expires = (
            "2099-01-01T00:00:00Z"
            if self.expires_in is None
            else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + self.expires_in))
        )
        body = json.dumps(
            {
                "AccessKeyId": "ASIAPODIDENTITY",
                "SecretAccessKey": "pod-secret",
                "Token": "pod-session-token",
                "Expiration": expires,
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def pod_identity_agent(tmp_path, monkeypatch) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Agent)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    token_file = tmp_path / "eks-pod-identity-token"
    token_file.write_text(Agent.token)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    url = f"http://127.0.0.1:{server.server_port}/v1/credentials"
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", url)
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", str(token_file))
    Agent.calls = []
    Agent.failing = ""
    Agent.expires_in = None
    Agent.released = threading.Event()
    try:
        yield url
    finally:
        Agent.released.set()  # a hanging request ends, so that the server can close
        server.shutdown()
        server.server_close()


def test_tokens_are_signed_with_the_credentials_pod_identity_hands_out(
    settings, pod_identity_agent
):
    """The environment EKS Pod Identity gives a pod: botocore's container provider fetches the
    role's credentials from the agent, and the token carries them."""
    user, token = credentials.IamCredentialProvider(iam_settings(settings)).get_credentials()
    assert user == USER
    assert "X-Amz-Credential=ASIAPODIDENTITY%2F" in token
    assert "X-Amz-Security-Token=pod-session-token" in token
    assert Agent.calls == [Agent.token]


def _iam_env(tls_redis: TlsRedis, tmp_path, **extra: str) -> dict[str, str]:
    env = replica_env(tls_redis.port, "iam-replica")
    for name in list(env):
        if name.startswith("AWS_"):
            del env[name]
    env.update(
        REDIS_TLS="true",
        REDIS_AUTH="iam",
        REDIS_USERNAME=USER,
        REDIS_IAM_CACHE_NAME="fes-test",
        AWS_REGION="eu-central-1",
        SSL_CERT_FILE=str(tls_redis.ca_file),
        # botocore may look nowhere but here: no files, no instance metadata.
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    env.update(extra)
    return env


def test_a_role_or_user_the_cache_refuses_stops_start_up_with_one_line(tls_redis, tmp_path):
    """gunicorn signs a real token (botocore, credentials from the environment); the server
    knows no such user, as ElastiCache refuses a role without elasticache:Connect."""
    env = _iam_env(
        tls_redis, tmp_path, AWS_ACCESS_KEY_ID="AKIDEXAMPLE", AWS_SECRET_ACCESS_KEY="x" * 40
    )
    refused = Gunicorn("refused", env, tmp_path / "refused.log")
    assert refused.refused() != 0
    (line,) = refused.log().strip().splitlines()
    assert line.startswith(
        f"configuration error: Redis at 127.0.0.1:{tls_redis.port} refused IAM authentication "
        f"as user '{USER}' (invalid username-password pair"
    )
    assert "elasticache:Connect on cache 'fes-test'" in line


def test_no_aws_credentials_stops_start_up_with_one_line(tls_redis, tmp_path):
    env = _iam_env(tls_redis, tmp_path)
    refused = Gunicorn("refused", env, tmp_path / "refused.log")
    assert refused.refused() != 0
    assert refused.log().strip().splitlines() == [
        "configuration error: REDIS_AUTH=iam, but botocore found no AWS credentials to sign an "
        "ElastiCache token with: on EKS, the pod's service account needs a Pod Identity "
        "association"
    ]


def test_recycling_drops_every_connection_on_a_cluster_the_rate_limiters_too(
    settings, valkey_cluster, tokens, monkeypatch
):
    """On a cluster (every ElastiCache Serverless cache) the rate limiter counts through a
    cluster client of its own: the recycler must drop its connections with the rest, or they
    meet ElastiCache's 12-hour close in the middle of a request."""
    nodes = [node.client() for node in valkey_cluster.nodes]
    for node in nodes:
        add_user(node, tokens.password)
    iam = iam_settings(
        settings,
        redis_port=valkey_cluster.port,
        redis_cluster=Switch.ON,
        rate_limit_saves="1000/minute",
        rate_limit_new_sessions="1000/minute",
    )
    # The test cluster speaks plain text: every client the app makes connects without TLS.
    plain = functools.partial(connection.client_options, ssl=False)
    monkeypatch.setattr(connection, "client_options", plain)
    monkeypatch.setattr(ratelimit, "client_options", plain)
    app = create_app(iam)
    browser = app.test_client()
    assert save(browser, "one").status_code == 303
    first = _connections(nodes)
    tokens.password = "eleven-hours-later-0123"
    for node in nodes:
        change_password(node, tokens.password)

    tokens.now += credentials.RECYCLE_SECONDS  # past the recycler's due time, jitter or not
    assert browser.get("/").status_code == 200  # its teardown drops every connection
    assert _connections(nodes).isdisjoint(first), "connections the recycler did not drop"
    assert save(browser, "two").status_code == 303
    assert listed_messages(browser.get("/").get_data(as_text=True)) == ["one", "two"]
    assert [refused_logins(node) for node in nodes] == [[]] * len(nodes)


def _connections(nodes: list[redis.Redis]) -> set[tuple[int, int]]:
    """The app's connections to every node, as (node, connection id)."""
    return {(n, i) for n, node in enumerate(nodes) for i in connection_ids(node)}


def _kill_connections(admin: redis.Redis) -> None:
    """Close every connection of the app's (a blip, a failover): the next need a new AUTH."""
    admin.execute_command("CLIENT", "KILL", "USER", USER)


def test_a_refused_token_costs_one_auth_per_connection_never_a_retry(iam_app, tokens):
    """redis-py's retry takes an authentication failure for a dropped connection: it signed
    and sent AUTH again, twice more, inside one page view."""
    app, admin = iam_app
    browser = app.test_client()
    assert save(browser, "one").status_code == 303
    change_password(admin, "a-token-the-app-cannot-sign-0123")  # the role lost its permission
    tokens.now += credentials.TOKEN_REUSE_SECONDS
    _kill_connections(admin)
    refused = refused_auths(admin)
    page = browser.get("/")
    assert refused_auths(admin) - refused == 1
    assert page.status_code == 503
    assert page.headers["Retry-After"] == "5"


@pytest.mark.parametrize("failing", ["500", "hang"])
def test_a_failing_agent_is_asked_once_per_connection_and_the_worker_recovers(
    pod_identity_agent, settings, tls_redis, trusts_the_test_ca, tokens, failing
):
    """A worker (re)started while the Pod Identity agent fails: it boots (REDIS_CLUSTER=auto
    asks the server, and cannot sign), each page view needing a connection asks the agent once
    (botocore tried 3 times, with 1 s pauses and, hanging, 2 s timeouts; redis-py's retry
    tripled that: 9 requests and 9 s answering 500, 27 s hanging), a probe is not held, and
    pages come back once the agent answers, without a restart."""
    admin = tls_redis.client()
    add_user(admin, tokens.password)
    tokens.via_agent = True
    Agent.failing = failing
    app = create_app(iam_settings(settings, redis_port=tls_redis.port))
    browser = app.test_client()
    assert browser.get("/healthz").status_code == 200
    Agent.calls.clear()
    started = time.monotonic()
    response = save(browser, "not stored")
    held = time.monotonic() - started
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert len(Agent.calls) == 1
    assert held < 6  # one attempt of 1 s at most (before: 9 s answering 500, 27 s hanging)
    assert save(browser, "not stored either").status_code == 503  # the cool-down: not asked
    assert len(Agent.calls) == 1

    Agent.failing = ""
    wait_until(lambda: save(browser, "stored").status_code == 303, 15, "a save to work")
    assert listed_messages(browser.get("/").get_data(as_text=True)) == ["stored"]


def test_a_token_with_life_left_serves_new_connections_while_the_agent_is_down(
    pod_identity_agent, iam_app, tokens
):
    """Due for a re-sign (10 of its 15 minutes gone) while the agent is down: the cached token
    is used rather than refused; the agent is asked once per provider, not at every connect;
    a token past its life is not used, and the agent answering again brings pages back."""
    app, admin = iam_app
    tokens.via_agent = True
    Agent.expires_in = 300  # botocore asks the agent at every signing
    browser = app.test_client()
    assert save(browser, "before").status_code == 303
    assert browser.get("/").status_code == 200
    signers = len(Agent.calls)  # one per client that connected (each signs for itself)
    assert signers >= 1

    Agent.failing = "500"
    tokens.now += credentials.TOKEN_REUSE_SECONDS + 60
    Agent.calls.clear()
    _kill_connections(admin)
    page = browser.get("/")
    assert page.status_code == 200
    assert listed_messages(page.get_data(as_text=True)) == ["before"]
    assert 1 <= len(Agent.calls) <= signers  # each tried once to sign a new one
    assert refused_logins(admin) == []

    _kill_connections(admin)  # again, moments later: the agent is not asked again yet
    assert save(browser, "during").status_code == 303
    assert len(Agent.calls) <= signers

    tokens.now += credentials.TOKEN_LIFETIME_SECONDS  # the cached token is no use now
    _kill_connections(admin)
    page = browser.get("/")
    assert page.status_code == 503
    assert page.headers["Retry-After"] == "5"

    Agent.failing = ""
    wait_until(lambda: browser.get("/").status_code == 200, 15, "pages to come back")
    assert listed_messages(browser.get("/").get_data(as_text=True)) == ["before", "during"]
