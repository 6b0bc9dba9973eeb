"""The pieces every serving command shares (``klockproxy.service``)."""

from __future__ import annotations

import re

import pytest

from klockproxy.core.errors import ConfigError
from klockproxy.service import ALL_INTERFACES, parse_listen


@pytest.mark.parametrize(
    ("value", "loopback", "everywhere"),
    [
        ("10.0.0.1:9443", ("10.0.0.1", 9443), ("10.0.0.1", 9443)),
        (":9443", ("127.0.0.1", 9443), ("0.0.0.0", 9443)),
        ("9443", ("127.0.0.1", 9443), ("0.0.0.0", 9443)),
        ("[fd00::1]:0", ("fd00::1", 0), ("fd00::1", 0)),
    ],
)
def test_a_listen_address_without_a_host_takes_the_modes_default(
    value: str, loopback: tuple[str, int], everywhere: tuple[str, int]
) -> None:
    assert parse_listen(value) == loopback
    assert parse_listen(value, default_host=ALL_INTERFACES) == everywhere


@pytest.mark.parametrize("value", ["host:http", "host:", "host:+80", "host:65536", "host:-1"])
def test_a_bad_port_is_refused_naming_the_option(value: str) -> None:
    with pytest.raises(
        ConfigError, match=re.escape(f"--health-listen {value!r}: expected HOST:PORT")
    ):
        parse_listen(value, "--health-listen")
