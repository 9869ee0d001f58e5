"""Security headers of every web answer: the Content-Security-Policy (config/security.py), nosniff, frame denial,
referrer policy, and HSTS only over HTTPS; and pages that the policy does not break (no inline code)."""

from html.parser import HTMLParser
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib import admin
from django.test import Client
from django.urls import reverse

from config.security import policy_header

pytestmark = pytest.mark.django_db
HSTS = "Strict-Transport-Security"


# The read API's requests skip Django's own middlewares (config.middleware.ReadApiMiddleware): its answers,
# found or not, are listed beside the others.
PATHS = ["/", "/api/metrics", "/healthz", "/admin/login/", "/no-such-page",
         "/xrpc/app.bsky.actor.getProfile?actor=did:plc:nobody", "/xrpc/no.such.method"]


def assert_security_headers(response: Any) -> None:
    assert response["Content-Security-Policy"] == policy_header(settings.SECURE_CSP)
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"
    assert response["Referrer-Policy"] == "same-origin"


@pytest.mark.parametrize("path", PATHS)
def test_it_sends_the_security_headers_on_every_kind_of_answer(client: Client, path: str) -> None:
    assert_security_headers(client.get(path))


@pytest.mark.parametrize("path", PATHS)
def test_it_sends_the_security_headers_when_served_asynchronously_as_under_daphne(async_client: Any,
                                                                                  path: str) -> None:
    assert_security_headers(async_to_sync(async_client.get)(path))


def test_it_refuses_a_host_it_does_not_serve_on_the_read_api_too(client: Client) -> None:
    response = client.get("/xrpc/app.bsky.actor.getProfile?actor=did:plc:nobody", HTTP_HOST="evil.example")
    assert response.status_code == 400
    assert response.json()["error"] == "InvalidRequest"
    assert_security_headers(response)


@pytest.mark.parametrize("path", PATHS[-2:])
def test_it_sends_the_read_api_answers_with_their_length(async_client: Any, path: str) -> None:
    response = async_to_sync(async_client.get)(path)
    assert int(response["Content-Length"]) == len(response.content) > 0


def test_it_redirects_the_read_api_to_https_when_told_to(client: Client, settings: Any) -> None:
    settings.SECURE_SSL_REDIRECT = True
    response = client.get("/xrpc/app.bsky.actor.getProfile?actor=did:plc:nobody")
    assert response.status_code == 301
    assert response["Location"].startswith("https://")
    assert client.get("/xrpc/app.bsky.actor.getProfile?actor=did:plc:nobody", secure=True).status_code == 400


def test_it_allows_scripts_styles_and_connections_from_the_site_only(client: Client) -> None:
    directives = dict(
        (part.split()[0], part.split()[1:]) for part in client.get("/")["Content-Security-Policy"].split("; ")
    )
    assert directives["script-src"] == ["'self'"]
    assert directives["style-src"] == ["'self'"]
    assert directives["connect-src"] == ["'self'"]
    assert directives["object-src"] == ["'none'"]
    assert directives["frame-ancestors"] == ["'none'"]


def test_it_sends_hsts_over_https_only(client: Client, settings: Any) -> None:
    settings.SECURE_HSTS_SECONDS = 31_536_000  # what HTTPS=on sets
    assert HSTS not in client.get("/healthz")
    assert client.get("/healthz", secure=True)[HSTS] == "max-age=31536000; includeSubDomains"


def test_it_ignores_x_forwarded_proto_unless_told_to_trust_a_proxy(client: Client, settings: Any) -> None:
    settings.SECURE_HSTS_SECONDS = 3600
    assert settings.SECURE_PROXY_SSL_HEADER is None  # TRUST_PROXY_HEADERS is off by default
    assert HSTS not in client.get("/healthz", headers={"X-Forwarded-Proto": "https"})
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")  # what TRUST_PROXY_HEADERS=on sets
    assert HSTS in client.get("/healthz", headers={"X-Forwarded-Proto": "https"})


class InlineCode(HTMLParser):
    """Whatever in a page a policy without 'unsafe-inline' blocks: inline scripts (a JSON data island is not
    executed and stays allowed), <style> elements, style="..." and on...="..." attributes, and scripts or
    stylesheets from elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self.in_inline_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        for name in attributes:
            if name == "style" or name.startswith("on"):
                self.found.append(f"<{tag} {name}=...>")
        if tag == "style":
            self.found.append("<style>")
        if tag == "script":
            source = attributes.get("src")
            if source is None and attributes.get("type") != "application/json":
                self.in_inline_script = True
            elif source is not None and not source.startswith("/"):
                self.found.append(f"<script src={source}>")
        stylesheet = (attributes.get("href") or "") if attributes.get("rel") == "stylesheet" else "/"
        if not stylesheet.startswith("/"):
            self.found.append(f"<link href={stylesheet}>")

    def handle_data(self, data: str) -> None:
        if self.in_inline_script and data.strip():
            self.found.append(f"<script>{data.strip()[:60]}")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self.in_inline_script = False


def inline_code(html: str) -> list[str]:
    parser = InlineCode()
    parser.feed(html)
    return parser.found


def test_it_serves_a_dashboard_the_policy_does_not_break(client: Client) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert inline_code(page.content.decode()) == []


def test_it_serves_admin_pages_the_policy_does_not_break(client: Client, admin_client: Client) -> None:
    pages = {"/admin/login/": client.get("/admin/login/"), "/admin/": admin_client.get("/admin/")}
    for model in admin.site._registry:
        url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        pages[url] = admin_client.get(url)
    for url, page in pages.items():
        assert page.status_code == 200, url
        assert inline_code(page.content.decode()) == [], url
