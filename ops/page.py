"""The message page, read the one way everything outside the app reads it.

The post-deploy check (``ops.verify``), the tests and the benchmark client all need the same
few things from the page: the CSRF token, the save form's save id, the listed messages and the
replica that served it. They are read with the standard HTML parser, so attribute order and
character references do not matter; the markup is the contract in app/templates/index.html.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser


@dataclass
class Page:
    """What the readers need from the message page, per the app's HTML contract."""

    csrf_token: str | None = None
    save_id: str | None = None
    messages: list[str] = field(default_factory=list)
    served_by: str | None = None


class _PageParser(HTMLParser):
    """Reads the page with the standard parser so attribute order and entities do not matter."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self._capturing: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "input" and attributes.get("name") == "csrf_token":
            # Every form carries the same token; the first one will do.
            self.page.csrf_token = self.page.csrf_token or attributes.get("value")
        elif tag == "input" and attributes.get("name") == "save_id":
            self.page.save_id = attributes.get("value")
        elif tag == "li" and "message" in (attributes.get("class") or "").split():
            self._start("message")
        elif tag == "span" and attributes.get("id") == "served-by":
            self._start("served-by")

    def _start(self, what: str) -> None:
        self._capturing, self._text = what, []

    def handle_data(self, data: str) -> None:
        if self._capturing:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if self._capturing == "message" and tag == "li":
            self.page.messages.append("".join(self._text).strip())
        elif self._capturing == "served-by" and tag == "span":
            self.page.served_by = "".join(self._text).strip()
        else:
            return
        self._capturing = None


def parse_page(html: str) -> Page:
    parser = _PageParser()
    parser.feed(html)
    parser.close()
    return parser.page
