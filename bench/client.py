"""A minimal browser-like client over http.client: keeps cookies, reads the CSRF token from the
page, posts messages. http.client rather than requests because the save-latency rows time single
requests and requests' own overhead (~0.3 ms) would blur the differences being measured."""

from __future__ import annotations

import http.client
import time
from urllib.parse import urlencode

from localservers import HOST
from ops.page import parse_page


class PageClient:
    """One visitor: a cookie jar and the latest CSRF token, against one server."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.port = port
        self.timeout = timeout
        self.cookies: dict[str, str] = {}
        self.csrf_token = ""

    @property
    def cookie_header(self) -> str:
        return "; ".join(f"{name}={value}" for name, value in self.cookies.items())

    def request(self, method: str, path: str, body: str | None = None) -> tuple[int, str, float]:
        """Send one request on a fresh connection (gunicorn sync workers close it anyway) and
        return (status, body, seconds); the time covers connect to the last byte."""
        headers = {"Cookie": self.cookie_header} if self.cookies else {}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        started = time.perf_counter()
        conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            text = resp.read().decode()
            elapsed = time.perf_counter() - started
            for header in resp.headers.get_all("Set-Cookie") or []:
                name, _, rest = header.partition("=")
                value = rest.split(";", 1)[0]
                if value:
                    self.cookies[name.strip()] = value
                else:
                    self.cookies.pop(name.strip(), None)
            return resp.status, text, elapsed
        finally:
            conn.close()

    def get_page(self) -> str:
        status, text, _ = self.request("GET", "/")
        if status != 200:
            raise RuntimeError(f"GET / on port {self.port} answered {status}")
        token = parse_page(text).csrf_token
        if token:
            self.csrf_token = token
        return text

    def save_body(self, message: str) -> str:
        return urlencode({"message": message, "csrf_token": self.csrf_token})

    def save(self, message: str) -> float:
        """POST /persistMessage without following the redirect; returns its latency."""
        if not self.csrf_token:
            self.get_page()
        status, _, elapsed = self.request("POST", "/persistMessage", self.save_body(message))
        if status != 303:
            raise RuntimeError(f"POST /persistMessage on port {self.port} answered {status}")
        return elapsed

    def message_count(self) -> int:
        return len(parse_page(self.get_page()).messages)
