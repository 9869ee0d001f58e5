"""Hostile requests to every admin changelist and object page, signed in and out, and to the dashboard,
``/api/metrics`` and a few read API queries: NUL, malformed regular expressions, bad JSON-path escapes, 10 kB
strings, invalid UTF-8, huge page numbers, undeclared lookups, SQL-ish text, wrong types, every sort column.
No answer is a 500 and nothing is logged as an error or with a traceback. Then what the admin refuses to run
(undeclared lookups, sorting by unindexed columns, facet counts) and the statement timeout of web requests."""

import gc
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from asgiref.sync import async_to_sync
from django.contrib import admin
from django.contrib.auth.models import Group, User
from django.db import DataError, connection, models
from django.http import HttpResponse
from django.test import AsyncClient, Client, RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from appview.admin import indexed_columns
from appview.models import Actor, GenericRecord, Post, RecordTombstone
from config.middleware import RejectMalformedRequestsMiddleware
from pipeline.models import IndexCursor
from tests.test_admin import DID, sample_row

pytestmark = pytest.mark.django_db


def q(text: str) -> str:
    return quote(text, safe="")


LONG = "x" * 10_000
# Query strings (already percent-encoded) for every changelist.
CHANGELIST_QUERIES = [
    # NUL in values, names and the search
    "q=%00", "did=%00", "uri=a%00b", "handle=%00", "status=%00", "collection=%00", "subject_uri=%00", "%00=1",
    "name=%00", "username=%00", "indexed_at__gte=%00",
    # lookups nobody declared: malformed regex, JSON paths with bad escapes, scans
    "did__regex=(((", "handle__iregex=" + q("[z-a]"), "username__regex=(((", "raw__a__b=%00", "raw__a__b=" + q("\\u"),
    "raw__contains=x", "raw__has_key=" + q("'"), "raw__" + q("'\"\\") + "=1", "text__icontains=x", "text__search=x",
    "uri__startswith=at", "seq=abc", "seq__gt=" + q("1e999"), "pk__in=1,2", "name__regex=" + q("["),
    "password__startswith=pbkdf2", "groups__name__regex=(((", "author=x", "did__exact=" + LONG, "id__gt=abc",
    "like_count__gt=-99999999999999999999", "created_at__year=abc", "did__in=" + q("'),("),
    "nonexistent__field=1",
    # declared filters given values of the wrong type or out of range
    "indexed_at__gte=abc", "indexed_at__gte=" + q("99999999-01-01"), "indexed_at__lt=%ff%fe", "indexed_at__isnull=x",
    "indexed_at__gte=" + q("2024-01-01 00:00:00+99:00"), "status__exact=bogus", "status__isnull=%ff",
    "sync_status__exact=abc", "first_seen_at__gte=" + q("2024-13-45"), "deleted_at__gte=-1", "is_staff__exact=2",
    "groups__id__exact=abc", "groups__id__exact=99999999999999999999", "collection=" + LONG, "did=" + LONG,
    "did=%ff%fe", "did=" + q("' OR 1=1 --"), "collection=" + q("'; DROP TABLE appview_post; --"),
    # the search
    "q=" + LONG, "q=%ff%fe", "q=%c3%28", "q=" + q("' OR 1=1 --"), "q=" + q("did:plc:'; DROP TABLE appview_post; --"),
    "q=" + q("at://'\\"), "q=" + q("!!! & | <-> :* ("), "q=" + q("@"), "q=+", "q=" + q("at://" + LONG),
    "q=" + q("did:" + LONG), "q=" + q("\u202e😀é"), "q=x&q=y",
    # pages, sorting and the changelist's own flags
    "p=99999999999", "p=-1", "p=abc", "p=" + "9" * 400, "o=abc", "o=1.2.3.4.5", "o=-99", "o=" + q("-0.-1.-2"),
    "o=" + "1." * 500, "o=%ff", *[f"o={column}" for column in range(9)], "o=-1", "o=-3", "o=20", "o=-20",
    "_facets=1", "_facets=1&o=4", "_to_field=raw", "_to_field=" + LONG, "_to_field=%ff", "_popup=1", "e=1", "e=1&p=x",
    "all=1", "all=1&p=2", "&".join(["x=1"] * 2000), "%zz=%", "=&=&&", "%ff%fe=%ff",
]
BOGUS_IDS = [
    "%00", "a%00b", LONG, "%ff%fe", q("' OR 1=1 --"), "99999999999999999999", "-1", "0", "abc", "..%2F..",
    q("at://did:plc:x/app.bsky.feed.post/3k"), "a/b/c", q("\u202e😀"), "%25", "_2F",
]
OBJECT_PAGES = ["change/", "history/", "delete/"]
OBJECT_QUERIES = ["", "?_to_field=raw", "?_popup=1", "?_changelist_filters=%00", "?_changelist_filters=" + q(LONG),
                  "?_to_field=%00"]
OTHER_URLS = [
    "/admin/", "/admin/appview/", "/admin/pipeline/", "/admin/auth/", "/admin/nothing/", "/admin/%00/",
    "/admin/appview/nothing/", "/admin/appview/post/add/", "/admin/appview/post/add/?_popup=1",
    "/admin/login/?next=%00", "/admin/login/?next=" + q("//evil.example/") + "&x=" + LONG, "/admin/password_change/",
    "/admin/jsi18n/", "/admin/autocomplete/?app_label=appview&model_name=post&field_name=did&term=x",
    "/admin/autocomplete/?app_label=%00&model_name=x&field_name=y&term=(((", "/admin/autocomplete/?term=" + LONG,
    "/admin/r/1/x/", "/admin/r/99999999999999999999/x/", "/admin/r/1/%00/", "/admin/" + LONG + "/",
    "/?%00", "/?x=" + LONG, "/%00", "/healthz?%00=1", "/healthz?x=%ff",
    "/api/metrics", "/api/metrics?%00", "/api/metrics?x=%00", "/api/metrics?x=" + LONG, "/api/metrics?format=%ff",
    "/api/metrics?format=api", "/api/metrics?format=" + q("' OR 1=1 --"), "/api/metrics%00", "/api/metrics/%00",
    "/api/metrics?" + "&".join(["x=1"] * 2000), "/static/%00", "/static/admin/css/base.css%00",
    "/xrpc/%00", "/xrpc/app.bsky.actor.getProfile?actor=%00", "/xrpc/app.bsky.actor.getProfile?actor=alice.test&z=%00",
    "/xrpc/app.bsky.feed.getPosts?uris=" + q("at://" + LONG),
    "/xrpc/app.bsky.feed.getAuthorFeed?actor=%ff%fe&limit=abc",
    "/xrpc/com.atproto.repo.getRecord?repo=' OR 1=1 --&collection=(((&rkey=%00",
    "/xrpc/app.bsky.feed.searchPosts?q=" + q("!!! & | <-> :* (") + "&limit=99999999999",
]


def admin_models() -> list[type[models.Model]]:
    return sorted(admin.site._registry, key=lambda model: model._meta.label)


def real_row(model: type[models.Model], staff: User) -> models.Model:
    if model is User:
        return staff
    if model is Group:
        return Group.objects.create(name="editors")
    return sample_row(model)


def changelist_url(model: type[models.Model]) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")


def object_url(model: type[models.Model], object_id: str, page: str) -> str:
    return f"{changelist_url(model)}{object_id}/{page}"


def hostile_urls(model: type[models.Model], real: models.Model) -> Iterator[str]:
    for query in CHANGELIST_QUERIES:
        yield f"{changelist_url(model)}?{query}"
    for page in OBJECT_PAGES:
        yield object_url(model, q(str(real.pk)), page)
    for object_id in BOGUS_IDS:
        for page in OBJECT_PAGES[:2]:
            yield object_url(model, object_id, page)
    for query in OBJECT_QUERIES:
        yield object_url(model, q(str(real.pk)), "change/") + query


@pytest.fixture
def staff(db: None) -> User:
    # No password: force_login needs none, and hashing one would cost a quarter of a second per test.
    return User.objects.create(username="admin", is_staff=True, is_superuser=True)


def staff_client(staff: User, client_class: type[Client] | type[AsyncClient] = Client) -> Any:
    client = client_class()
    client.force_login(staff)
    return client


def problems(url: str, response: HttpResponse) -> list[str]:
    where = f"{url[:160]!r} -> {response.status_code}"
    if response.status_code >= 500 and response.status_code != 501:  # 501: an XRPC method this server lacks
        return [f"{where}: server error {response.content[:300]!r}"]
    if b"Traceback" in response.content:
        return [f"{where}: a traceback in the body"]
    return []


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{record.name} {record.levelname}: {record.getMessage()[:300]}" for record in caplog.records
            if record.levelno >= logging.ERROR or record.exc_info]


def send_all(get: Callable[[str], HttpResponse], urls: list[str]) -> tuple[list[str], set[int]]:
    found: list[str] = []
    statuses: set[int] = set()
    for url in urls:
        response = get(url)
        statuses.add(response.status_code)
        found += problems(url, response)
        if len(found) > 20:
            break
    return found, statuses


@pytest.mark.parametrize("model", admin_models(), ids=lambda model: model._meta.label)
def test_it_answers_hostile_admin_requests_without_a_server_error(
    staff: User, model: type[models.Model], caplog: pytest.LogCaptureFixture
) -> None:
    urls = list(hostile_urls(model, real_row(model, staff)))
    with caplog.at_level(logging.INFO):
        signed_in, signed_in_statuses = send_all(staff_client(staff).get, urls)
        signed_out, signed_out_statuses = send_all(Client().get, urls)

    assert signed_in == []
    assert signed_out == []
    assert errors_logged(caplog) == []
    assert 200 in signed_in_statuses and 400 in signed_in_statuses
    assert signed_out_statuses <= {302, 400}  # to the sign-in page, or refused before it


def test_it_answers_hostile_requests_to_the_other_pages_without_a_server_error(
    staff: User, caplog: pytest.LogCaptureFixture, settings: Any
) -> None:
    settings.XRPC_RATE_LIMIT = 1_000_000
    with caplog.at_level(logging.INFO):
        signed_in, _ = send_all(staff_client(staff).get, OTHER_URLS)
        signed_out, _ = send_all(Client().get, OTHER_URLS)
        posted, _ = send_all(lambda url: staff_client(staff).post(url, {"action": "delete_selected",
                                                                        "_selected_action": ["%00", LONG]}),
                             [changelist_url(model) for model in admin_models()])
    gc.collect()  # closes the connections of the read API's query threads

    assert signed_in == []
    assert signed_out == []
    assert posted == []
    assert errors_logged(caplog) == []


@pytest.mark.django_db(transaction=True)
def test_it_answers_hostile_requests_the_same_through_asgi(staff: User, caplog: pytest.LogCaptureFixture) -> None:
    """daphne serves the ASGI handler, where the middleware runs its asynchronous path."""
    post = sample_row(Post)
    urls = [*hostile_urls(Post, post), *hostile_urls(IndexCursor, sample_row(IndexCursor)), *OTHER_URLS[:30]]
    client = staff_client(staff, AsyncClient)
    with caplog.at_level(logging.INFO):
        found, statuses = send_all(async_to_sync(client.get), urls)
        nul = async_to_sync(client.get)(object_url(Post, "%00", "change/"))
        refused = async_to_sync(client.get)(f"{changelist_url(Post)}?did__regex=(((")
        found_by_did = async_to_sync(client.get)(f"{changelist_url(Post)}?did={q(DID)}")

    assert found == []
    assert errors_logged(caplog) == []
    assert {200, 302, 400, 403} <= statuses
    assert (nul.status_code, refused.status_code, found_by_did.status_code) == (400, 400, 200)
    assert post.pk in found_by_did.content.decode()


@pytest.mark.parametrize("path", ["/admin/appview/post/%00/change/", "/admin/?q=%00", "/api/metrics?x=a%00b",
                                  "/healthz?%00", "/%00", "/admin/appview/actor/?did=%00"])
def test_it_answers_400_to_a_nul_in_the_path_or_the_query(staff: User, path: str) -> None:
    for client in (staff_client(staff), Client()):
        response = client.get(path)
        assert response.status_code == 400
        assert b"NUL" in response.content


def test_it_leaves_nul_in_read_api_urls_to_the_read_api(db: None) -> None:
    response = Client().get("/xrpc/app.bsky.actor.getProfile%00")
    gc.collect()

    assert response.status_code == 501
    assert response.json()["error"] == "MethodNotImplemented"


@pytest.mark.parametrize(
    "query",
    ["text__icontains=x", "raw__contains=x", "did__regex=(((", "raw__a__b=x", "raw__a__b=" + q("\\u"), "seq=abc",
     "like_count__gt=1", "did__startswith=did", "created_at__lt=2024-01-01"],
)
def test_it_refuses_lookups_beside_the_declared_filters(staff: User, query: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    sample_row(Post)
    with CaptureQueriesContext(connection) as queries:
        response = staff_client(staff).get(f"{changelist_url(Post)}?{query}")

    assert response.status_code == 400
    assert not any("appview_post" in item["sql"] for item in queries.captured_queries)
    assert errors_logged(caplog) == []
    assert [record.levelname for record in caplog.records
            if record.name == "django.security.DisallowedModelAdminLookup"] == ["WARNING"]


def test_it_answers_400_to_a_value_the_database_refuses(caplog: pytest.LogCaptureFixture) -> None:
    """The last guard, for a value no check before the database caught."""
    middleware = RejectMalformedRequestsMiddleware(lambda request: HttpResponse())
    refused = DataError("invalid regular expression: parentheses () not balanced")

    response = middleware.process_exception(RequestFactory().get("/admin/appview/post/"), refused)

    assert response is not None and response.status_code == 400
    assert errors_logged(caplog) == []
    assert middleware.process_exception(RequestFactory().get("/"), ValueError("a bug")) is None


@pytest.mark.parametrize(
    ("model", "query"),
    [(Post, f"did={q(DID)}"), (Post, "indexed_at__gte=" + q("2020-01-01 00:00:00+00:00")),
     (Actor, "status__exact=active"), (Actor, "sync_status__exact=active"), (GenericRecord, "collection=com.example.x"),
     (User, "is_staff__exact=1"),
     (Actor, "first_seen_at__gte=2020-01-01%2000:00Z&first_seen_at__lt=2100-01-01%2000:00Z")],
)
def test_it_keeps_the_declared_filters_and_the_links_to_an_actors_records(
    staff: User, model: type[models.Model], query: str
) -> None:
    row = real_row(model, staff)
    page = staff_client(staff).get(f"{changelist_url(model)}?{query}")

    assert page.status_code == 200
    assert str(row) in page.content.decode()


@pytest.mark.parametrize(
    ("model", "sortable"),
    [(Post, ["uri"]), (Actor, ["did"]), (IndexCursor, ["name"]), (GenericRecord, ["uri", "collection"]),
     (RecordTombstone, ["uri", "did"])],
)
def test_it_sorts_only_by_indexed_columns(staff: User, model: type[models.Model], sortable: list[str]) -> None:
    real_row(model, staff)
    model_admin = admin.site._registry[model]
    list_display = list(model_admin.list_display)
    client = staff_client(staff)

    assert model_admin.get_sortable_by(None) == sortable
    assert set(sortable) <= indexed_columns(model)
    for column, name in enumerate(list_display):
        with CaptureQueriesContext(connection) as queries:
            response = client.get(changelist_url(model), {"o": str(column)})
        assert response.status_code == 200
        page_query = next(item["sql"] for item in queries.captured_queries
                          if f'FROM "{model._meta.db_table}"' in item["sql"] and "ORDER BY" in item["sql"])
        order_by = page_query.split("ORDER BY", 1)[1]
        sorted_by = {field.column for field in model._meta.concrete_fields if f'."{field.column}"' in order_by}
        expected = {model._meta.pk.column} | ({model._meta.get_field(name).column} if name in sortable else set())
        assert sorted_by == expected, (name, order_by)


def test_it_never_counts_facets(staff: User) -> None:
    sample_row(Actor)
    with CaptureQueriesContext(connection) as queries:
        page = staff_client(staff).get(changelist_url(Actor), {"_facets": "1"})

    assert page.status_code == 200
    assert "Show counts" not in page.content.decode()
    assert not any("FILTER (WHERE" in item["sql"] for item in queries.captured_queries)


@pytest.mark.parametrize("model", admin_models(), ids=lambda model: model._meta.label)
def test_it_searches_or_ignores_the_search_on_every_changelist(staff: User, model: type[models.Model]) -> None:
    row = real_row(model, staff)
    client = staff_client(staff)
    for term in ("x", str(row.pk), DID, f"at://{DID}/app.bsky.feed.post/3kabc", "firehose", "admin", "editors"):
        assert client.get(changelist_url(model), {"q": term}).status_code == 200


def test_it_ignores_a_search_where_there_is_no_search_box(staff: User) -> None:
    sample_row(IndexCursor)
    page = staff_client(staff).get(changelist_url(IndexCursor), {"q": "anything"}).content.decode()

    assert 'id="searchbar"' not in page
    assert "firehose" in page


@pytest.fixture
def locked_table() -> Iterator[Callable[[str], None]]:
    """Holds an exclusive lock on a table from another connection, so that any query of it waits."""

    def lock(table: str) -> None:
        holder = psycopg.connect(**connection.get_connection_params())
        holder.execute(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
        holders.append(holder)
        # Released after a while whatever happens, so that a query nothing cancels ends the test in seconds.
        release = threading.Timer(5, holder.close)
        release.start()
        releases.append(release)

    holders: list[psycopg.Connection] = []
    releases: list[threading.Timer] = []
    yield lock
    for release in releases:
        release.cancel()
    for holder in holders:
        holder.close()


def statement_timeout() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("client_class", [Client, AsyncClient], ids=["wsgi", "asgi"])
def test_it_cancels_a_slow_admin_query_with_a_504(
    staff: User, locked_table: Callable[[str], None], caplog: pytest.LogCaptureFixture, settings: Any,
    client_class: type[Client] | type[AsyncClient],
) -> None:
    settings.WEB_STATEMENT_TIMEOUT_MS = 300
    sample_row(IndexCursor)
    client = staff_client(staff, client_class)
    get = async_to_sync(client.get) if client_class is AsyncClient else client.get
    locked_table(IndexCursor._meta.db_table)

    with caplog.at_level(logging.INFO):
        response = get(changelist_url(IndexCursor))

    assert response.status_code == 504
    assert "took longer than 0.3 s" in response.content.decode()
    assert errors_logged(caplog) == []
    assert any("query cancelled" in record.getMessage() for record in caplog.records)
    assert statement_timeout() == "0"  # reset once the request is over


def test_it_runs_the_queries_of_a_web_request_under_the_timeout(staff: User, settings: Any) -> None:
    settings.WEB_STATEMENT_TIMEOUT_MS = 1234
    seen: list[str] = []
    original = admin.site._registry[IndexCursor].get_queryset

    def spy(request: Any) -> Any:
        seen.append(statement_timeout())
        return original(request)

    admin.site._registry[IndexCursor].get_queryset = spy  # type: ignore[method-assign]
    try:
        assert staff_client(staff).get(changelist_url(IndexCursor)).status_code == 200
    finally:
        del admin.site._registry[IndexCursor].get_queryset

    assert seen and set(seen) == {"1234ms"}
    assert statement_timeout() == "0"
