"""Recording stand-in for ElastiCache's API on loopback, for the drill's failover.

moto answers what it models (CreateReplicationGroup, DescribeReplicationGroups, ...): every such
request is passed to moto's server as it came. moto 5.2 implements none of the three calls below,
so this server answers them itself, in ElastiCache's Query-API format:

- ``TestFailover``: records the call, adds AWS's first event ("Test Failover API called for node
  group ...") and starts ``on_failover(emit)`` in a thread; the test's promotion of a real Valkey
  replica happens there, and it calls ``emit`` with the events ElastiCache sends at each step.
- ``DescribeEvents``: the events emitted so far, from ``StartTime`` on, oldest first.
- ``DescribeServerlessCaches``: the caches named in ``serverless``, else ElastiCache's
  ServerlessCacheNotFoundFault.

Every request's parameters are recorded in ``calls`` (the Action and its arguments).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

import requests

NAMESPACE = "http://elasticache.amazonaws.com/doc/2015-02-02/"
Emit = Callable[[str, str, str], None]  # source id, source type, message


class ElastiCacheStandIn(ThreadingHTTPServer):
    def __init__(self, moto_url: str, on_failover: Callable[[Emit], None]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.moto_url = moto_url
        self.on_failover = on_failover
        self.calls: list[dict[str, str]] = []
        self.serverless: set[str] = set()
        self.events: list[tuple[datetime, str, str, str]] = []
        self.failovers: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(10)
        for failover in self.failovers:
            failover.join(60)

    def emit(self, source: str, source_type: str, message: str) -> None:
        with self._lock:
            self.events.append((datetime.now(UTC), source, source_type, message))

    def test_failover(self, params: dict[str, str]) -> tuple[int, str]:
        group, node_group = params["ReplicationGroupId"], params["NodeGroupId"]
        self.emit(
            group, "replication-group", f"Test Failover API called for node group {node_group}"
        )
        failover = threading.Thread(target=self.on_failover, args=(self.emit,), daemon=True)
        self.failovers.append(failover)
        failover.start()
        group_xml = (
            f"<ReplicationGroup><ReplicationGroupId>{escape(group)}</ReplicationGroupId>"
            "<Status>available</Status></ReplicationGroup>"
        )
        return 200, _response("TestFailover", group_xml)

    def describe_events(self, params: dict[str, str]) -> tuple[int, str]:
        since = datetime.fromisoformat(params["StartTime"].replace("Z", "+00:00"))
        with self._lock:
            chosen = [e for e in self.events if e[0] >= since]
        events = "".join(
            f"<Event><SourceIdentifier>{escape(source)}</SourceIdentifier>"
            f"<SourceType>{source_type}</SourceType><Message>{escape(message)}</Message>"
            f"<Date>{at.strftime('%Y-%m-%dT%H:%M:%S.%f')[:-3]}Z</Date></Event>"
            for at, source, source_type, message in chosen
        )
        return 200, _response("DescribeEvents", f"<Events>{events}</Events>")

    def describe_serverless_caches(self, params: dict[str, str]) -> tuple[int, str]:
        name = params.get("ServerlessCacheName", "")
        if name not in self.serverless:
            return 404, (
                f'<ErrorResponse xmlns="{NAMESPACE}"><Error><Type>Sender</Type>'
                "<Code>ServerlessCacheNotFoundFault</Code>"
                f"<Message>Serverless cache {escape(name)} not found</Message></Error>"
                f"<RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
            )
        cache = (
            f"<member><ServerlessCacheName>{escape(name)}</ServerlessCacheName>"
            "<Status>available</Status><Engine>valkey</Engine></member>"
        )
        return 200, _response(
            "DescribeServerlessCaches", f"<ServerlessCaches>{cache}</ServerlessCaches>"
        )


def _response(action: str, result: str) -> str:
    return (
        f'<{action}Response xmlns="{NAMESPACE}"><{action}Result>{result}</{action}Result>'
        f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>"
        f"</{action}Response>"
    )


class _Handler(BaseHTTPRequestHandler):
    server: ElastiCacheStandIn

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        params = dict(parse_qsl(body.decode()))
        self.server.calls.append(params)
        answers = {
            "TestFailover": self.server.test_failover,
            "DescribeEvents": self.server.describe_events,
            "DescribeServerlessCaches": self.server.describe_serverless_caches,
        }
        answer = answers.get(params.get("Action", ""))
        if answer is not None:
            code, xml = answer(params)
            self._reply(code, xml.encode(), "text/xml")
            return
        skip = {"host", "content-length", "connection", "accept-encoding"}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
        moto = requests.post(
            self.server.moto_url + self.path, data=body, headers=headers, timeout=30
        )
        self._reply(moto.status_code, moto.content, moto.headers.get("Content-Type", "text/xml"))

    def _reply(self, code: int, data: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test asserts on ``calls``, not an access log."""
