"""The identity settings (config/settings.py): name servers and host overrides read from the environment, and a
bad value stops the process with one line that names the variable."""

import pytest

from config.env import ConfigError, env_host_map, env_ip_addresses
from tests.test_settings import assert_one_line, run_check


def test_it_reads_name_servers_with_or_without_a_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DNS_NAMESERVERS", "127.0.0.1:5353, 10.0.0.2,[::1]:53")
    assert env_ip_addresses("DNS_NAMESERVERS", default_port=53) == [("127.0.0.1", 5353), ("10.0.0.2", 53),
                                                                     ("::1", 53)]
    monkeypatch.delenv("DNS_NAMESERVERS")
    assert env_ip_addresses("DNS_NAMESERVERS", default_port=53) == []


def test_it_reads_host_overrides_as_lowercase_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDENTITY_HOST_OVERRIDES", "Alice.Test=127.0.0.1:8123,pds.test=127.0.0.1:2583")
    assert env_host_map("IDENTITY_HOST_OVERRIDES") == {"alice.test": ("127.0.0.1", 8123),
                                                       "pds.test": ("127.0.0.1", 2583)}


@pytest.mark.parametrize("value", ["dns.google", "127.0.0.1:port", "127.0.0.1/24", "127.0.0.1:70000"])
def test_it_refuses_name_servers_that_are_not_ip_addresses(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("DNS_NAMESERVERS", value)
    with pytest.raises(ConfigError, match="DNS_NAMESERVERS"):
        env_ip_addresses("DNS_NAMESERVERS", default_port=53)


@pytest.mark.parametrize("value", ["alice.test", "alice.test=127.0.0.1", "=127.0.0.1:80", "a.test=host:port"])
def test_it_refuses_host_overrides_without_a_name_and_an_address(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("IDENTITY_HOST_OVERRIDES", value)
    with pytest.raises(ConfigError, match="IDENTITY_HOST_OVERRIDES"):
        env_host_map("IDENTITY_HOST_OVERRIDES")


@pytest.mark.parametrize(("name", "value", "message"), [
    ("PLC_URL", "plc.directory", "PLC_URL must be an http:// or https:// URL"),
    ("IDENTITY_TIMEOUT", "0", "IDENTITY_TIMEOUT must be a number of at least 0.1"),
    ("DNS_NAMESERVERS", "dns.google", "DNS_NAMESERVERS entries must be IP addresses"),
])
def test_it_stops_with_one_line_on_a_bad_identity_setting(name: str, value: str, message: str) -> None:
    assert_one_line(run_check(**{name: value}), message)
