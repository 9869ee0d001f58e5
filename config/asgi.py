import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_asgi_app = get_asgi_application()

from typing import Any  # noqa: E402

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import re_path  # noqa: E402

from dashboard.routing import websocket_urlpatterns  # noqa: E402


async def refuse_websocket(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A websocket to a path without a route (``/ws/other/``, ``/ws/metrics`` without the slash): the handshake
    is refused (daphne answers 403, as for a foreign origin). Without this, URLRouter raises ValueError, which
    daphne logs as an ERROR with a traceback for every such request."""
    message = await receive()
    if message["type"] == "websocket.connect":
        await send({"type": "websocket.close"})


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            URLRouter([*websocket_urlpatterns, re_path(r"", refuse_websocket, name="ws-no-route")])
        ),
    }
)

# What start-up made (Django, the apps, daphne's and Twisted's modules) lives as long as the process. Frozen,
# it leaves the full collections, which walked all of it: 70 ms each, a stall that made the read API's
# slowest answers (docs/benchmarks.md, "Read API").
gc.freeze()
