"""``/api/metrics``: the dashboard snapshot as JSON, for the page's polling fallback and for scripts."""

import logging

import redis
from django.db import DatabaseError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from dashboard import selectors

logger = logging.getLogger(__name__)


class MetricsView(APIView):
    # Read-only: anything but GET, HEAD and OPTIONS answers 405.
    http_method_names = ["get", "head", "options"]

    def get(self, request: Request) -> Response:
        try:
            snapshot = selectors.build_snapshot()
        except (redis.RedisError, DatabaseError) as exc:
            # Missing keys are zeros; an unreachable store is an outage, and says which.
            logger.warning("metrics snapshot failed: %s: %s", type(exc).__name__, exc)
            return Response({"detail": f"store unavailable: {type(exc).__name__}"}, status=503)
        return Response(snapshot, headers={"Cache-Control": "no-store"})
