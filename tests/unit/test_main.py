"""`python -m app`'s gunicorn arguments (the command itself runs in tests/system/test_main.py)."""

from __future__ import annotations

import pytest

from app.__main__ import DEFAULT_BIND, bind_arguments


def test_without_an_address_the_app_listens_on_the_default():
    assert bind_arguments(["--workers", "1"]) == ["--bind", DEFAULT_BIND]


@pytest.mark.parametrize(
    "arguments",
    [
        ["--bind", "127.0.0.1:9000"],
        ["--bind=127.0.0.1:9000"],
        ["-b", "127.0.0.1:9000"],
        ["-b127.0.0.1:9000"],
        ["--workers", "1", "--bind", "unix:/tmp/app.sock"],
    ],
)
def test_an_address_given_replaces_the_default(arguments):
    # gunicorn's --bind appends: passing the default too would listen on both.
    assert bind_arguments(arguments) == []
