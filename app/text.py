"""A message's text as it is stored, and its length as the page counts it.

Browsers submit every line break of a textarea as CRLF (HTML's form submission), while the
textarea's ``maxlength`` counts its value, where each line break is one LF, in UTF-16 code
units (JavaScript's ``length``: a character outside the Basic Multilingual Plane, such as most
emoji, counts two). Counting the submitted text as it arrives would refuse messages the page
accepted (2,000 characters with 10 line breaks arrive as 2,010) and store a CR that counts
against the session's byte budget. So a message is normalised first (CRLF, and a lone CR that
only a crafted form sends, become LF), then trimmed, counted and stored as it is. What shows
nothing (whitespace and format characters alone) counts as empty, and control characters a
textarea never sends are refused.
"""

from __future__ import annotations

import unicodedata


def normalised(raw: str) -> str:
    """``raw`` with every line break as LF."""
    return raw.replace("\r\n", "\n").replace("\r", "\n")


def invisible(text: str) -> bool:
    """Whether ``text`` shows nothing: only whitespace and format characters (a zero-width
    space, a direction mark), which a page would list as an empty line."""
    if text.isprintable():  # the common case, in C: no format or control character at all
        return text.isspace()
    return all(ch.isspace() or unicodedata.category(ch) == "Cf" for ch in text)


def has_control_characters(text: str) -> bool:
    """Whether ``text`` holds a control character a textarea never sends (NUL, ESC, DEL...):
    only tab and line breaks (LF, after ``normalised``) are text."""
    if text.isprintable():  # the common case, in C
        return False
    return any(unicodedata.category(ch) == "Cc" and ch not in "\t\n" for ch in text)


def length(text: str) -> int:
    """``text``'s length as a textarea's maxlength counts it: UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2
