"""Read-only admin over the indexed data.

Records come from the network, so nothing here can be added, changed or deleted. Changelists stay fast on
tables of 100M rows, whatever the query string asks (SPEC section 14): no full COUNT(*) (estimated counts when
unfiltered), no facet counts, filters limited to the declared ones, searches that hit an index (exact DID,
handle or AT-URI; post text through the full-text index), sorting only by indexed columns. Sign-ins are
throttled (``appview.login_throttle``).
"""

import json
import math
from typing import Any

from django.contrib import admin
from django.contrib.admin import helpers
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth import admin as auth_admin
from django.contrib.auth.models import Group, User
from django.contrib.postgres.search import SearchQuery, SearchVector
from django.core.exceptions import BadRequest, ValidationError
from django.core.paginator import Paginator
from django.db import connection, models
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode

from appview import login_throttle
from appview.models import (
    MODEL_BY_COLLECTION,
    RECORD_MODELS,
    Actor,
    BackfillRepo,
    GenericRecord,
    Like,
    Post,
    RecordTombstone,
    Repost,
)
from appview.selectors import estimated_rows
from pipeline.models import IndexCursor

EXACT_COUNT_LIMIT = 100_000


class EstimatedCountPaginator(Paginator):
    """Counts exactly up to EXACT_COUNT_LIMIT rows, and beyond that uses PostgreSQL's own estimate of an
    unfiltered table instead of scanning it."""

    @cached_property
    def count(self) -> int:
        query = self.object_list.query
        if not query.where:
            estimate = estimated_rows(self.object_list.model._meta.db_table)
            if estimate > EXACT_COUNT_LIMIT:
                return estimate
        return self.object_list[: EXACT_COUNT_LIMIT + 1].count()


def admin_link(obj: models.Model, label: str | None = None) -> str:
    url = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, label or str(obj))


def changelist_link(model: type[models.Model], label: str, **filters: str) -> str:
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    return format_html('<a href="{}?{}">{}</a>', url, urlencode(filters), label)


def record_link(uri: str | None) -> str:
    """A link to the admin page of the record an AT-URI names, when that record is stored."""
    if not uri:
        return "-"
    parts = uri.removeprefix("at://").split("/")
    model = MODEL_BY_COLLECTION.get(parts[1]) if len(parts) == 3 else None
    if model is None:
        return uri
    if not model.objects.filter(pk=uri).exists():
        return format_html("{} <em>(not indexed)</em>", uri)
    return admin_link(model(uri=uri), uri)


class ThrottledAuthenticationForm(AdminAuthenticationForm):
    """The admin sign-in form, refusing attempts while ``login_throttle`` says so, before any password check."""

    error_messages = {
        **AdminAuthenticationForm.error_messages,
        "throttled": "Too many failed sign-in attempts for this account or from your network. "
                     "Try again in %(minutes)d minute(s).",
    }

    def clean(self) -> dict[str, Any]:
        username, password = self.cleaned_data.get("username"), self.cleaned_data.get("password")
        if username is None or not password:
            return super().clean()  # a field is missing or invalid: no password is checked
        address = (self.request.META.get("REMOTE_ADDR") if self.request else None) or "unknown"
        wait = login_throttle.seconds_throttled(address, username)
        if wait:
            raise ValidationError(self.error_messages["throttled"], code="throttled",
                                  params={"minutes": math.ceil(wait / 60)})
        try:
            cleaned = super().clean()
        except ValidationError:
            login_throttle.record_failure(address, username)
            raise
        login_throttle.clear_username(username)
        return cleaned


admin.site.login_form = ThrottledAuthenticationForm


class DeclaredFiltersOnly(admin.ModelAdmin):
    """Filters from the query string only through the declared ``list_filter`` (and ``link_lookups``, the exact
    lookups the admin's own links use): anything else (``?text__icontains=``, ``?did__regex=(((``,
    ``?raw__a__b=``) answers 400 instead of running whatever the URL asks for."""

    link_lookups: tuple[str, ...] = ()
    # The parameters Django's field filters read: exact values, null checks, date ranges, emptiness, and the
    # target of a relation.
    FILTER_SUFFIXES = ("", "__exact", "__isnull", "__gte", "__lt", "__isempty", "__id__exact", "__pk__exact")

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        if lookup in self.link_lookups:
            return True
        for item in self.get_list_filter(request) if request is not None else self.list_filter:
            if isinstance(item, type) and issubclass(item, admin.SimpleListFilter):
                if lookup == item.parameter_name:
                    return True
                continue
            field = item[0] if isinstance(item, (list, tuple)) else item
            if any(lookup == f"{field}{suffix}" for suffix in self.FILTER_SUFFIXES):
                return super().lookup_allowed(lookup, value, request)
        return False


def indexed_columns(model: type[models.Model]) -> set[str]:
    """The columns an ``ORDER BY ... LIMIT`` can read in order from a b-tree: the primary key, unique or indexed
    fields, and the leading column of each plain (not partial, not BRIN or GIN) index. Nullable columns are left
    out: their NULLs are one group that the tie-break on the primary key would sort whole (actors whose handle
    is not known yet, for example)."""
    names = {model._meta.pk.name}
    names.update(field.name for field in model._meta.concrete_fields if field.unique or field.db_index)
    for index in model._meta.indexes:
        if type(index) is models.Index and index.fields and index.condition is None:
            names.add(index.fields[0].removeprefix("-"))
    return {name for name in names if not model._meta.get_field(name).null}


class SortableOnlyChangeList(ChangeList):
    """Sorts only by the columns the admin declares sortable: Django's changelist would sort by any column
    number in ``?o=``, whatever ``sortable_by`` says."""

    def get_ordering_field(self, field_name: Any) -> Any:
        if field_name not in self.sortable_by:
            return None
        return super().get_ordering_field(field_name)


class ReadOnlyAdmin(DeclaredFiltersOnly):
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    # Each facet is a COUNT(*) FILTER over the whole table.
    show_facets = admin.ShowFacets.NEVER
    list_per_page = 50
    ordering = ("-pk",)

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return SortableOnlyChangeList

    def get_sortable_by(self, request: HttpRequest) -> list[str]:
        indexed = indexed_columns(self.model)
        return [name for name in self.get_list_display(request) if isinstance(name, str) and name in indexed]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: models.Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: models.Model | None = None) -> bool:
        return False

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        """Exact matches on indexed identifiers only; a scan of a huge table is never started from here."""
        term = search_term.strip()
        if not term or not self.search_fields:  # no search box: ?q= is ignored
            return queryset, False
        return queryset.filter(self.search_filter(term)), False

    def search_filter(self, term: str) -> models.Q:
        if term.startswith("at://"):
            return models.Q(pk=term)
        return models.Q(did=term)


class RecordAdmin(ReadOnlyAdmin):
    list_display = ("uri", "author", "created_at", "indexed_at")
    list_filter = (("indexed_at", admin.DateFieldListFilter),)
    link_lookups = ("did",)  # an actor's page links to its records with ?did=
    search_help_text = "Exact DID (did:...) or AT-URI (at://...)"
    search_fields = ("uri",)  # shows the search box; get_search_results decides what runs
    subject_fields: tuple[str, ...] = ()

    def get_fields(self, request: HttpRequest, obj: models.Model | None = None) -> list[str]:
        typed = [f.name for f in self.model._meta.concrete_fields if f.name not in {"raw", "did"}]
        return ["author", *typed, *self.subject_fields, "pretty_raw"]

    def get_readonly_fields(self, request: HttpRequest, obj: models.Model | None = None) -> list[str]:
        return self.get_fields(request, obj)

    @admin.display(description="author")
    def author(self, obj: Any) -> str:
        return admin_link(Actor(did=obj.did), obj.did)

    @admin.display(description="record")
    def pretty_raw(self, obj: Any) -> str:
        pretty = json.dumps(obj.raw, indent=2, ensure_ascii=False)
        return format_html("<pre style='white-space:pre-wrap'>{}</pre>", pretty)


class SubjectPostAdmin(RecordAdmin):
    list_display = ("uri", "author", "subject_uri", "created_at")
    subject_fields = ("subject_post",)

    @admin.display(description="subject post")
    def subject_post(self, obj: Like | Repost) -> str:
        return record_link(obj.subject_uri)

    def search_filter(self, term: str) -> models.Q:
        return super().search_filter(term) | models.Q(subject_uri=term)


@admin.register(Post)
class PostAdmin(RecordAdmin):
    list_display = ("uri", "author", "short_text", "like_count", "repost_count", "reply_count", "created_at")
    search_help_text = "Exact DID or AT-URI, or words of the post text"
    subject_fields = ("reply_parent", "reply_root", "quoted_post")

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        term = search_term.strip()
        if not term or term.startswith(("at://", "did:")):
            return super().get_search_results(request, queryset, search_term)
        # The same expression as the post_text_search GIN index, so the search uses the index.
        matches = queryset.annotate(text_search=SearchVector("text", config="simple")).filter(
            text_search=SearchQuery(term, config="simple", search_type="plain")
        )
        return matches, False

    def search_filter(self, term: str) -> models.Q:
        if term.startswith("at://"):
            return models.Q(pk=term) | models.Q(reply_root_uri=term)
        return super().search_filter(term)

    @admin.display(description="text")
    def short_text(self, obj: Post) -> str:
        return obj.text[:80] + ("…" if len(obj.text) > 80 else "")

    @admin.display(description="reply to")
    def reply_parent(self, obj: Post) -> str:
        return record_link(obj.reply_parent_uri)

    @admin.display(description="thread root")
    def reply_root(self, obj: Post) -> str:
        return record_link(obj.reply_root_uri)

    @admin.display(description="quotes")
    def quoted_post(self, obj: Post) -> str:
        return record_link(obj.quote_uri)


admin.site.register(Like, SubjectPostAdmin)
admin.site.register(Repost, SubjectPostAdmin)


class SubjectActorAdmin(RecordAdmin):
    list_display = ("uri", "author", "subject", "created_at")
    subject_fields = ("subject",)

    @admin.display(description="subject")
    def subject(self, obj: Any) -> str:
        return admin_link(Actor(did=obj.subject_did), obj.subject_did)

    def search_filter(self, term: str) -> models.Q:
        return super().search_filter(term) | models.Q(subject_did=term)


for record_model in RECORD_MODELS:
    if admin.site.is_registered(record_model):
        continue
    has_subject_did = any(f.name == "subject_did" for f in record_model._meta.concrete_fields)
    admin.site.register(record_model, SubjectActorAdmin if has_subject_did else RecordAdmin)


class CollectionFilter(admin.SimpleListFilter):
    title = "collection"
    parameter_name = "collection"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        # A skip scan over the collection index: one index probe per distinct collection, not a table scan.
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                WITH RECURSIVE collections(name) AS (
                    (SELECT collection FROM {GenericRecord._meta.db_table} ORDER BY collection LIMIT 1)
                    UNION ALL
                    SELECT (SELECT collection FROM {GenericRecord._meta.db_table}
                            WHERE collection > collections.name ORDER BY collection LIMIT 1)
                    FROM collections WHERE collections.name IS NOT NULL
                )
                SELECT name FROM collections WHERE name IS NOT NULL LIMIT 200
                """
            )
            return [(name, name) for (name,) in cursor.fetchall()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(collection=self.value()) if self.value() else queryset


@admin.register(GenericRecord)
class GenericRecordAdmin(RecordAdmin):
    list_display = ("uri", "collection", "author", "created_at", "indexed_at")
    list_filter = (CollectionFilter, ("indexed_at", admin.DateFieldListFilter))


@admin.register(Actor)
class ActorAdmin(ReadOnlyAdmin):
    list_display = ("did", "handle", "status", "sync_status", "rev", "display_name", "followers_count",
                    "follows_count", "posts_count")
    list_filter = ("status", "sync_status", ("first_seen_at", admin.DateFieldListFilter))
    fields = ("did", "handle", "handle_checked_at", "status", "active", "sync_status", "rev", "sync_reason",
              "sync_tries", "resync_after", "missing_revs", "floor_rev", "display_name", "description",
              "followers_count", "follows_count", "posts_count", "first_seen_at", "updated_at", "records")
    search_fields = ("did",)
    search_help_text = "Exact DID (did:...) or handle"
    readonly_fields = ("records",)

    def search_filter(self, term: str) -> models.Q:
        if term.startswith("did:"):
            return models.Q(did=term)
        return models.Q(handle=term.lower().removeprefix("@"))

    @admin.display(description="records")
    def records(self, obj: Actor) -> str:
        links = [
            (changelist_link(model, model._meta.verbose_name_plural.capitalize(), did=obj.did),)
            for model in (*RECORD_MODELS, GenericRecord)
        ]
        return format_html_join(" · ", "{}", links)


@admin.register(RecordTombstone)
class RecordTombstoneAdmin(ReadOnlyAdmin):
    list_display = ("uri", "did", "rev", "deleted_at")
    list_filter = (("deleted_at", admin.DateFieldListFilter),)
    search_fields = ("uri",)
    search_help_text = "Exact DID (did:...) or AT-URI (at://...)"


@admin.register(IndexCursor)
class IndexCursorAdmin(ReadOnlyAdmin):
    list_display = ("name", "generation", "seq", "updated_at")


@admin.register(BackfillRepo)
class BackfillRepoAdmin(ReadOnlyAdmin):
    list_display = ("did", "state", "rev", "records", "tries", "error", "finished_at")
    list_filter = ("state",)
    search_fields = ("did",)
    search_help_text = "Exact DID (did:...)"

    def search_filter(self, term: str) -> models.Q:
        return models.Q(did=term)


class CheckedActionSelection(admin.ModelAdmin):
    """Refuses with 400 an action posted with a selection that is not a list of primary keys (Django's
    changelist would raise a ValueError from the filter, a 500)."""

    def response_action(self, request: HttpRequest, queryset: QuerySet[Any]) -> HttpResponse | None:
        for selected in request.POST.getlist(helpers.ACTION_CHECKBOX_NAME):
            try:
                self.model._meta.pk.to_python(selected)
            except ValidationError as refused:
                raise BadRequest(f"not a {self.model._meta.verbose_name} id: {selected[:100]!r}") from refused
        return super().response_action(request, queryset)


# Django's own user and group admins (the only ones with actions), under the same limits.
admin.site.unregister(User)
admin.site.unregister(Group)


@admin.register(User)
class UserAdmin(DeclaredFiltersOnly, CheckedActionSelection, auth_admin.UserAdmin):
    pass


@admin.register(Group)
class GroupAdmin(DeclaredFiltersOnly, CheckedActionSelection, auth_admin.GroupAdmin):
    pass
