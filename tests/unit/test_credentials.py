"""The IAM token signer, the credential provider's token reuse, and the connection recycler.

The signer's known answer: fixed credentials (AWS's documentation example keys) and a fixed
clock give one exact token, which matches an independent computation of AWS Signature
Version 4 (written here from AWS's description of a presigned request) and the output of
botocore's own query-string presigner, ``SigV4QueryAuth``.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import logging
from dataclasses import replace
from urllib.parse import parse_qsl, quote, urlsplit

import botocore.auth
import botocore.loaders
import botocore.session
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import CredentialRetrievalError

from app import credentials, logs
from app.config import Settings

ACCESS_KEY = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
NOW = datetime.datetime(2026, 12, 6, 12, 0, 0)
# The token for the ``iam`` settings below at NOW, recorded once; the tests also compute it
# twice more, independently of this string.
KNOWN_TOKEN = (
    "fes-0123456789ab/?Action=connect&User=message-app&X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIDEXAMPLE%2F20261206%2Feu-central-1%2Felasticache%2Faws4_request"
    "&X-Amz-Date=20261206T120000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host"
    "&X-Amz-Signature=9c58a534d9ffbea118e10963eed4f9b58e3c320782f83d101bf1437a8087dfc9"
)


@pytest.fixture
def iam(settings: Settings) -> Settings:
    return replace(
        settings,
        redis_tls=True,
        redis_auth="iam",
        redis_username="message-app",
        redis_iam_cache_name="fes-0123456789ab",
        aws_region="eu-central-1",
    )


@pytest.fixture
def frozen_clock(monkeypatch):
    """botocore's signers read the time from ``datetime.datetime.utcnow()`` in botocore.auth."""

    class Frozen(datetime.datetime):
        @classmethod
        def utcnow(cls):
            return NOW

    monkeypatch.setattr(botocore.auth.datetime, "datetime", Frozen)


def session_with(access_key: str = ACCESS_KEY, secret: str = SECRET, token: str | None = None):
    session = botocore.session.Session()
    session.set_credentials(access_key, secret, token)
    return session


def sigv4_presign(host: str, query: dict[str, str], region: str, token: str | None) -> str:
    """A presigned GET per AWS's SigV4 description: canonical request, string to sign, key."""
    stamp = NOW.strftime("%Y%m%dT%H%M%SZ")
    scope = f"{NOW:%Y%m%d}/{region}/elasticache/aws4_request"
    params = {
        **query,
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Credential": f"{ACCESS_KEY}/{scope}",
        "X-Amz-Date": stamp,
        "X-Amz-Expires": "900",
        "X-Amz-SignedHeaders": "host",
    }
    if token is not None:
        params["X-Amz-Security-Token"] = token
    canonical_query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items())
    )
    empty_payload = hashlib.sha256(b"").hexdigest()
    canonical = f"GET\n/\n{canonical_query}\nhost:{host}\n\nhost\n{empty_payload}"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = f"AWS4{SECRET}".encode()
    for part in (f"{NOW:%Y%m%d}", region, "elasticache", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def split(token: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(f"http://{token}")
    return parts.netloc, dict(parse_qsl(parts.query, keep_blank_values=True))


def test_the_token_is_the_known_answer(iam, frozen_clock):
    token = credentials.sign_token(iam, session_with())
    host, query = split(token)
    expected = sigv4_presign(
        host, {"Action": "connect", "User": "message-app"}, "eu-central-1", None
    )
    assert query["X-Amz-Signature"] == expected
    assert token == KNOWN_TOKEN


def test_the_token_is_what_botocores_own_presigner_makes(iam, frozen_clock):
    request = AWSRequest(
        method="GET", url="http://fes-0123456789ab/?Action=connect&User=message-app"
    )
    signer = botocore.auth.SigV4QueryAuth(
        Credentials(ACCESS_KEY, SECRET), "elasticache", "eu-central-1", expires=900
    )
    signer.add_auth(request)
    assert credentials.sign_token(iam, session_with()) == request.prepare().url.removeprefix(
        "http://"
    )


def test_serverless_and_temporary_credentials(iam, frozen_clock):
    """Pod Identity hands out temporary credentials: their session token is signed in."""
    serverless = replace(iam, redis_iam_serverless=True, redis_iam_cache_name="fes-cache")
    token = credentials.sign_token(serverless, session_with(token="SESSION/TOKEN+="))
    host, query = split(token)
    assert host == "fes-cache"
    assert (query["ResourceType"], query["X-Amz-Security-Token"]) == (
        "ServerlessCache",
        "SESSION/TOKEN+=",
    )
    expected = sigv4_presign(
        host,
        {"Action": "connect", "User": "message-app", "ResourceType": "ServerlessCache"},
        "eu-central-1",
        "SESSION/TOKEN+=",
    )
    assert query["X-Amz-Signature"] == expected


def test_no_credentials_is_a_clear_refusal(iam, monkeypatch):
    monkeypatch.setattr(botocore.session.Session, "get_credentials", lambda self: None)
    provider = credentials.IamCredentialProvider(iam)
    with pytest.raises(credentials.IamAuthError) as refused:
        provider.get_credentials()
    line = credentials.refusal(iam, refused.value)
    assert line.startswith("REDIS_AUTH=iam, but botocore found no AWS credentials")
    assert "Pod Identity association" in line and "\n" not in line


def test_a_failing_credential_source_is_a_redis_error(iam, monkeypatch):
    """An agent that does not answer makes a redis-py AuthenticationError (a 503, a retry),
    never a traceback from botocore."""

    def fail(self):
        raise CredentialRetrievalError(provider="container-role", error_msg="timed out")

    monkeypatch.setattr(botocore.session.Session, "get_credentials", fail)
    with pytest.raises(credentials.IamAuthError, match=r"could not be loaded.*timed out"):
        credentials.IamCredentialProvider(iam).get_credentials()


def test_a_refused_role_or_user_names_both(iam):
    line = credentials.refusal(iam, Exception("WRONGPASS invalid username-password pair"))
    assert "IAM authentication as user 'message-app'" in line
    assert "elasticache:Connect" in line and "'fes-0123456789ab'" in line


def test_a_token_is_reused_for_ten_minutes_then_signed_again(iam, monkeypatch):
    now = [1000.0]
    signed: list[float] = []
    monkeypatch.setattr(credentials, "clock", lambda: now[0])
    monkeypatch.setattr(
        credentials, "sign_token", lambda settings, session: signed.append(now[0]) or f"t{now[0]}"
    )
    provider = credentials.IamCredentialProvider(iam)
    assert provider.get_credentials() == ("message-app", "t1000.0")
    now[0] += credentials.TOKEN_REUSE_SECONDS - 1
    assert provider.get_credentials() == ("message-app", "t1000.0")
    now[0] += 1
    assert provider.get_credentials() == ("message-app", f"t{now[0]}")
    assert signed == [1000.0, 1600.0]
    # Every token handed out has at least 5 of its 15 minutes left.
    assert credentials.TOKEN_LIFETIME_SECONDS - credentials.TOKEN_REUSE_SECONDS >= 300


def test_the_recycler_resets_once_per_interval(monkeypatch):
    now = [0.0]
    resets: list[float] = []
    monkeypatch.setattr(credentials, "clock", lambda: now[0])
    monkeypatch.setattr(credentials.random, "uniform", lambda low, high: high)  # the most jitter
    recycler = credentials.ConnectionRecycler(lambda: resets.append(now[0]))
    first = credentials.RECYCLE_SECONDS - credentials.RECYCLE_JITTER_SECONDS  # 10 h
    for now[0] in (0.0, first - 1):
        recycler.after_request()
    assert resets == []
    for now[0] in (first, first + 1, 2 * first - 1, 2 * first):
        recycler.after_request()
    assert resets == [first, 2 * first]
    # Always well before ElastiCache's 12 hours.
    assert credentials.RECYCLE_SECONDS < 12 * 3600


def test_the_recycler_only_runs_with_iam(make_app, iam):
    assert "connection_recycler" not in make_app().extensions
    assert "connection_recycler" in make_app(**{k: getattr(iam, k) for k in IAM_FIELDS}).extensions


IAM_FIELDS = ("redis_tls", "redis_auth", "redis_username", "redis_iam_cache_name", "aws_region")


def test_signing_reads_no_service_model(iam, monkeypatch):
    """The image drops botocore's service models (Dockerfile): signing a token and finding
    the credentials must not need one."""

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"botocore loaded a data file {args}: the image has none of them")

    for method in ("load_service_model", "load_data", "load_data_with_path"):
        monkeypatch.setattr(botocore.loaders.Loader, method, refuse)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    _, token = credentials.IamCredentialProvider(iam).get_credentials()
    assert "X-Amz-Signature=" in token


def test_debug_logging_never_writes_what_a_signed_token_is_made_of(iam, capsys):
    """LOG_LEVEL=DEBUG: botocore logs its canonical request (with the session token) and the
    signature at DEBUG, from which anyone who reads the log could rebuild a token for the
    cache, good for 15 minutes (found by review: both were in the log)."""
    logs.configure("DEBUG")
    try:
        token = credentials.sign_token(iam, session_with(token="SESSION-TOKEN-VALUE"))
        logging.getLogger("app").debug("still written")
    finally:
        logs.configure("INFO")
    signature = token.rsplit("X-Amz-Signature=", 1)[1]
    out = capsys.readouterr().out
    assert "still written" in out
    assert signature not in out
    assert "SESSION-TOKEN-VALUE" not in out
