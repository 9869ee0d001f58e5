"""Admin sign-in throttling (appview.login_throttle) through the real sign-in page, counted in the real Redis,
and the password validators."""

import time
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import password_validation
from django.contrib.auth.models import User
from django.contrib.auth.signals import user_login_failed
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.test import Client

from appview.login_throttle import client_network
from pipeline import redis_store

pytestmark = pytest.mark.django_db

PASSWORD = "a long and unusual passphrase 7"
THROTTLED = "Too many failed sign-in attempts"


@pytest.fixture(autouse=True)
def small_limits(settings: Any) -> None:
    settings.ADMIN_LOGIN_MAX_FAILURES = 3
    settings.ADMIN_LOGIN_MAX_FAILURES_PER_IP = 5
    settings.ADMIN_LOGIN_WINDOW_SECONDS = 900
    # Each sign-in checks a hash; the default hasher would spend a quarter of a second on each.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def admin_user(small_limits: None) -> User:
    return User.objects.create_superuser("admin", "admin@example.com", PASSWORD)


def sign_in(username: str, password: str, address: str = "203.0.113.7") -> HttpResponse:
    return Client().post("/admin/login/?next=/admin/", {"username": username, "password": password},
                         REMOTE_ADDR=address)


def signed_in(response: HttpResponse) -> bool:
    return response.status_code == 302 and response["Location"] == "/admin/"


def test_it_refuses_the_right_password_once_a_username_has_failed_too_often(admin_user: User) -> None:
    for _ in range(3):
        refused = sign_in("admin", "wrong")
        assert refused.status_code == 200 and THROTTLED not in refused.content.decode()

    throttled = sign_in("admin", PASSWORD)

    assert not signed_in(throttled)
    assert THROTTLED in throttled.content.decode()
    assert "Try again in 15 minute(s)" in throttled.content.decode()
    # Other addresses too: the count is the username's.
    assert not signed_in(sign_in("admin", PASSWORD, address="198.51.100.1"))
    assert not signed_in(sign_in("ADMIN", PASSWORD, address="198.51.100.2"))


def test_it_refuses_every_username_from_an_address_that_failed_too_often(admin_user: User) -> None:
    for index in range(5):
        assert not signed_in(sign_in(f"guess{index}", "wrong"))

    throttled = sign_in("admin", PASSWORD)

    assert THROTTLED in throttled.content.decode()
    assert signed_in(sign_in("admin", PASSWORD, address="198.51.100.1"))


def test_it_counts_an_ipv6_client_by_its_64(admin_user: User) -> None:
    for index in range(5):
        sign_in(f"guess{index}", "wrong", address=f"2001:db8:1:2::{index + 1}")

    assert THROTTLED in sign_in("admin", PASSWORD, address="2001:db8:1:2:ffff::1").content.decode()
    assert signed_in(sign_in("admin", PASSWORD, address="2001:db8:1:3::1"))
    assert client_network("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_network("not an address") == "not an address"


def test_it_clears_a_usernames_failures_when_it_signs_in(admin_user: User) -> None:
    for _ in range(2):
        sign_in("admin", "wrong")
    assert signed_in(sign_in("admin", PASSWORD))

    for _ in range(2):
        sign_in("admin", "wrong", address="198.51.100.1")

    assert signed_in(sign_in("admin", PASSWORD))  # 4 failures in the window, but only 2 since the last success


def test_it_checks_no_password_while_throttled(admin_user: User) -> None:
    failures: list[str] = []

    def count(sender: Any, credentials: dict[str, Any], **kwargs: Any) -> None:
        failures.append(credentials["username"])

    user_login_failed.connect(count)
    try:
        for _ in range(6):
            sign_in("admin", "wrong")
    finally:
        user_login_failed.disconnect(count)

    assert failures == ["admin"] * 3


def test_it_keeps_its_counts_in_redis_under_the_key_prefix(admin_user: User) -> None:
    sign_in("Admin", "wrong", address="192.0.2.9")
    client = redis_store.connect()
    prefix = django_settings.REDIS_KEY_PREFIX

    assert client.get(f"{prefix}admin:login-failures:user:admin") == b"1"
    assert client.get(f"{prefix}admin:login-failures:ip:192.0.2.9") == b"1"
    assert 0 < client.ttl(f"{prefix}admin:login-failures:user:admin") <= 900


def test_it_lets_a_username_in_again_after_the_window(admin_user: User, settings: Any) -> None:
    settings.ADMIN_LOGIN_WINDOW_SECONDS = 1
    for _ in range(3):
        sign_in("admin", "wrong")
    assert THROTTLED in sign_in("admin", PASSWORD).content.decode()

    time.sleep(1.1)

    assert signed_in(sign_in("admin", PASSWORD))


def test_it_signs_in_unthrottled_when_redis_is_unreachable(admin_user: User, settings: Any) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    redis_store.connect.cache_clear()
    try:
        for _ in range(4):
            sign_in("admin", "wrong")
        assert signed_in(sign_in("admin", PASSWORD))
    finally:
        redis_store.connect.cache_clear()


@pytest.mark.parametrize(
    ("username", "password"),
    [("a\x00b", "x"), ("admin", "\x00"), ("x" * 10_000, "x"), ("", ""), ("admin", ""), ("' OR 1=1 --", "x")],
)
def test_it_answers_malformed_sign_ins_with_the_form(admin_user: User, username: str, password: str) -> None:
    response = sign_in(username, password)

    assert response.status_code == 200
    assert not signed_in(response)


@pytest.mark.parametrize("password", ["short", "password1234", "123456789012", "admin-admin@example.com"])
def test_it_refuses_weak_passwords(password: str) -> None:
    user = User(username="admin", email="admin-admin@example.com")
    with pytest.raises(ValidationError):
        password_validation.validate_password(password, user)


def test_it_accepts_a_long_unusual_password() -> None:
    password_validation.validate_password(PASSWORD, User(username="admin", email="admin@example.com"))
