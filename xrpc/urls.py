from django.urls import path

from xrpc import views

# Every path under /xrpc/ reaches the view, so that an unknown or malformed method name (with a slash, or
# none at all) gets an XRPC error body rather than Django's HTML 404 page.
urlpatterns = [path("", views.xrpc, {"nsid": ""}), path("<path:nsid>", views.xrpc, name="xrpc")]
