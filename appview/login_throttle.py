"""Throttling of admin sign-ins (SPEC section 14): failures are counted in Redis per username and per client
address, and past ``ADMIN_LOGIN_MAX_FAILURES`` for a username or ``ADMIN_LOGIN_MAX_FAILURES_PER_IP`` for an
address within ``ADMIN_LOGIN_WINDOW_SECONDS`` (counted from the first failure), sign-ins are refused before
the password is checked: guessing stays slow and a refused attempt costs no password hash.

A success clears its username's count, not the address's (one known account must not reset the guessing of
others). An operator locked out can wait for the window or delete the key (``redis-cli DEL
admin:login-failures:user:<name>``). If Redis is unreachable, sign-ins are not throttled (a warning is logged):
the admin stays usable during an outage, as the read API's rate limit does.
"""

import ipaddress
import logging

import redis
from django.conf import settings

from pipeline import redis_store

logger = logging.getLogger(__name__)


def client_network(address: str) -> str:
    """The unit counted for a client: its IPv4 address, or the /64 of an IPv6 one (what one host usually
    holds, so that walking through its addresses does not reset the count)."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address or "unknown"
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


def _username_key(username: str) -> str:
    # Case-folded, so that case variants of a name share one count.
    return redis_store.key(f"admin:login-failures:user:{username.casefold()}")


def _address_key(address: str) -> str:
    return redis_store.key(f"admin:login-failures:ip:{client_network(address)}")


def _limits(address: str, username: str) -> list[tuple[str, int]]:
    return [(_username_key(username), settings.ADMIN_LOGIN_MAX_FAILURES),
            (_address_key(address), settings.ADMIN_LOGIN_MAX_FAILURES_PER_IP)]


def seconds_throttled(address: str, username: str) -> int:
    """How long sign-ins of this username or from this address stay refused; 0 when they are allowed."""
    limits = _limits(address, username)
    try:
        pipe = redis_store.connect().pipeline(transaction=False)
        for key, _ in limits:
            pipe.get(key)
            pipe.pttl(key)
        replies = pipe.execute()
    except redis.RedisError as exc:
        logger.warning("admin sign-in not throttled (Redis: %s)", exc)
        return 0
    waits = [0]
    for index, (_, limit) in enumerate(limits):
        failures, ttl_ms = replies[2 * index], replies[2 * index + 1]
        if failures is not None and int(failures) >= limit:
            waits.append(max(1, -(-int(ttl_ms) // 1000)) if ttl_ms > 0 else settings.ADMIN_LOGIN_WINDOW_SECONDS)
    return max(waits)


def record_failure(address: str, username: str) -> None:
    window = settings.ADMIN_LOGIN_WINDOW_SECONDS
    try:
        pipe = redis_store.connect().pipeline(transaction=True)
        for key, _ in _limits(address, username):
            pipe.incr(key)
            pipe.expire(key, window, nx=True)  # the window runs from the first failure
        pipe.execute()
    except redis.RedisError as exc:
        logger.warning("admin sign-in failure not counted (Redis: %s)", exc)


def clear_username(username: str) -> None:
    try:
        redis_store.connect().delete(_username_key(username))
    except redis.RedisError as exc:
        logger.warning("admin sign-in failures not cleared (Redis: %s)", exc)
