from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import models
from django.test import Client
from django.urls import reverse

from appview.models import RECORD_MODELS, Actor, BackfillRepo, GenericRecord, Post, RecordTombstone
from pipeline.models import IndexCursor

DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
ALL_MODELS: list[type[models.Model]] = [*RECORD_MODELS, GenericRecord, Actor, RecordTombstone, IndexCursor]


def sample_row(model: type[models.Model]) -> models.Model:
    """A row with every required column filled, the way the worker would store it."""
    if model is Actor:
        return Actor.objects.create(did=DID, handle="alice.test", display_name="Alice")
    if model is IndexCursor:
        return IndexCursor.objects.create(name="firehose", seq=31_000_000_000)
    if model is BackfillRepo:
        return BackfillRepo.objects.create(did=DID, state="failed", error="fetch-unavailable: HTTP 503", tries=2)
    if model is RecordTombstone:
        return RecordTombstone.objects.create(uri=f"at://{DID}/app.bsky.feed.like/3deleted", did=DID,
                                              rev="3lmxjza3h2i27")
    collection = getattr(model, "collection", "com.example.thing") if model is not GenericRecord else "com.example.x"
    values: dict[str, Any] = {
        "uri": f"at://{DID}/{collection}/3kabc",
        "did": DID,
        "rkey": "3kabc",
        "cid": "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm",
        "seq": 42,
        "raw": {"$type": collection, "text": "héllo <b>world</b>", "createdAt": "2024-01-01T00:00:00Z"},
    }
    if model is GenericRecord:
        values["collection"] = collection
    for field in model._meta.concrete_fields:
        if field.name in values or field.has_default() or field.null or field.has_db_default():
            continue
        values[field.name] = f"at://{DID}/app.bsky.feed.post/3kabc" if field.name.endswith("uri") else DID
    return model.objects.create(**values)


@pytest.fixture
def staff_client(db: None) -> Client:
    user = User.objects.create_superuser("admin", "admin@example.com", "pw-for-tests")
    client = Client()
    client.force_login(user)
    return client


def admin_urls(obj: models.Model) -> list[str]:
    meta = obj._meta
    return [
        reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist"),
        reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk]),
    ]


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
def test_it_shows_every_model_to_staff(staff_client: Client, model: type[models.Model]) -> None:
    obj = sample_row(model)
    for url in admin_urls(obj):
        response = staff_client.get(url)
        assert response.status_code == 200, url
    change_page = staff_client.get(admin_urls(obj)[1]).content.decode()
    assert "Save" not in change_page  # records are read-only


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
def test_it_sends_anonymous_users_to_login(db: None, model: type[models.Model]) -> None:
    obj = sample_row(model)
    for url in admin_urls(obj):
        response = Client().get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))


def test_it_forbids_adding_and_deleting_records(staff_client: Client) -> None:
    post = sample_row(Post)
    assert staff_client.get(reverse("admin:appview_post_add")).status_code == 403
    assert staff_client.post(reverse("admin:appview_post_delete", args=[post.pk])).status_code == 403
    assert Post.objects.filter(pk=post.pk).exists()


def test_it_pretty_prints_the_raw_record_escaped(staff_client: Client) -> None:
    post = sample_row(Post)
    page = staff_client.get(admin_urls(post)[1]).content.decode()
    assert "&quot;text&quot;: &quot;héllo &lt;b&gt;world&lt;/b&gt;&quot;" in page


def test_it_links_a_like_to_its_subject_post(staff_client: Client) -> None:
    post = sample_row(Post)
    like_model = next(m for m in RECORD_MODELS if m.collection == "app.bsky.feed.like")
    like = sample_row(like_model)
    page = staff_client.get(admin_urls(like)[1]).content.decode()
    assert reverse("admin:appview_post_change", args=[post.pk]) in page


def test_it_links_an_actor_to_its_records(staff_client: Client) -> None:
    actor = sample_row(Actor)
    page = staff_client.get(admin_urls(actor)[1]).content.decode()
    assert reverse("admin:appview_post_changelist") + "?did=" in page
    filtered = staff_client.get(reverse("admin:appview_post_changelist"), {"did": actor.pk})
    assert filtered.status_code == 200


@pytest.mark.parametrize(
    ("query", "found"),
    [(DID, True), (f"at://{DID}/app.bsky.feed.post/3kabc", True), ("héllo", True), ("did:plc:other", False),
     ("absent words", False)],
)
def test_it_searches_posts_by_did_uri_and_text(staff_client: Client, query: str, found: bool) -> None:
    post = sample_row(Post)
    Post.objects.filter(pk=post.pk).update(text="héllo world")
    page = staff_client.get(reverse("admin:appview_post_changelist"), {"q": query}).content.decode()
    assert (f"at://{DID}/app.bsky.feed.post/3kabc" in page) is found


@pytest.mark.parametrize(("query", "found"), [(DID, True), ("alice.test", True), ("@Alice.Test", True), ("bob", False)])
def test_it_searches_actors_by_did_and_handle(staff_client: Client, query: str, found: bool) -> None:
    sample_row(Actor)
    page = staff_client.get(reverse("admin:appview_actor_changelist"), {"q": query}).content.decode()
    assert ("alice.test" in page) is found


def test_it_filters_generic_records_by_collection(staff_client: Client) -> None:
    sample_row(GenericRecord)
    page = staff_client.get(reverse("admin:appview_genericrecord_changelist")).content.decode()
    assert "?collection=com.example.x" in page
