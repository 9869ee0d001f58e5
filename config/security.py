"""The Content-Security-Policy header, built from the ``SECURE_CSP`` setting.

``SECURE_CSP`` has the name and shape Django 6 gives the setting of its own
``django.middleware.csp.ContentSecurityPolicyMiddleware`` (directive -> list of sources): after that upgrade,
this module goes and the setting stays. Django's ``SecurityMiddleware`` sends the other security headers.
"""

from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponseBase
from django.utils.decorators import sync_and_async_middleware

HEADER = "Content-Security-Policy"


def policy_header(policy: dict[str, list[str]]) -> str:
    return "; ".join(" ".join([directive, *sources]) for directive, sources in policy.items())


@sync_and_async_middleware
def content_security_policy_middleware(
    get_response: Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]],
) -> Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]]:
    header = policy_header(settings.SECURE_CSP)

    # Every response, JSON and errors included: a policy that covers only some pages leaves the others open.
    if iscoroutinefunction(get_response):

        async def async_middleware(request: HttpRequest) -> HttpResponseBase:
            response = await get_response(request)  # type: ignore[misc]
            response.headers.setdefault(HEADER, header)
            return response

        return markcoroutinefunction(async_middleware)

    def middleware(request: HttpRequest) -> HttpResponseBase:
        response = get_response(request)
        response.headers.setdefault(HEADER, header)  # type: ignore[union-attr]
        return response  # type: ignore[return-value]

    return middleware
