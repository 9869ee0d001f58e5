"""The AppView schema: actors, one table per indexed collection, a generic record table, tombstones
that keep deletes ordered, and the ledger of row counts (the durable cursor is ``pipeline.models``).

Every record row carries ``seq``, the relay seq of the event that last wrote it. Writes only apply
when their seq is newer than the row's and than any tombstone for the same URI, which is what makes
indexing idempotent and independent of the order in which workers commit events.
"""

from typing import ClassVar

from django.contrib.postgres.indexes import BrinIndex, GinIndex
from django.contrib.postgres.search import SearchVector
from django.db import models
from django.db.models.functions import Least, Now


class ActorStatus(models.TextChoices):
    ACTIVE = "active"
    DEACTIVATED = "deactivated"
    TAKENDOWN = "takendown"
    SUSPENDED = "suspended"
    DELETED = "deleted"
    DESYNCHRONIZED = "desynchronized"
    THROTTLED = "throttled"


class Actor(models.Model):
    did = models.TextField(primary_key=True)
    handle = models.TextField(null=True, blank=True)
    handle_seq = models.BigIntegerField(default=0)
    active = models.BooleanField(default=True)
    status = models.TextField(choices=ActorStatus.choices, default=ActorStatus.ACTIVE)
    status_seq = models.BigIntegerField(default=0)
    rev = models.TextField(null=True, blank=True)
    rev_seq = models.BigIntegerField(default=0)
    needs_resync = models.BooleanField(default=False)
    # Records written by events at or below this seq belong to a deleted account and are refused.
    purged_seq = models.BigIntegerField(default=0)
    display_name = models.TextField(null=True, blank=True)
    description = models.TextField(null=True, blank=True)
    followers_count = models.IntegerField(default=0)
    follows_count = models.IntegerField(default=0)
    posts_count = models.IntegerField(default=0)
    first_seen_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        indexes = [
            models.Index(fields=["handle"], name="actor_handle_idx"),
            models.Index(fields=["status"], name="actor_status_idx", condition=~models.Q(status="active")),
            BrinIndex(fields=["first_seen_at"], name="actor_first_seen_brin"),
        ]

    def __str__(self) -> str:
        return self.handle or self.did


class RepoRecord(models.Model):
    """Columns shared by every stored record; subclasses add what their queries need."""

    collection: ClassVar[str]

    uri = models.TextField(primary_key=True)
    did = models.TextField()
    rkey = models.TextField()
    cid = models.TextField()
    rev = models.TextField(blank=True, default="")
    seq = models.BigIntegerField()
    created_at = models.DateTimeField(null=True, blank=True)
    indexed_at = models.DateTimeField(db_default=Now())
    raw = models.JSONField()
    # Where the record sorts in feeds and lists: its claimed creation time, but never later than when this
    # index first saw it (a createdAt in the future cannot pin a record to the top).
    sort_at = models.GeneratedField(expression=Least("created_at", "indexed_at"),
                                    output_field=models.DateTimeField(), db_persist=True)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return self.uri


def record_indexes(table: str, *extra: models.Index) -> list[models.Index]:
    return [
        models.Index(fields=["did", "-sort_at", "-uri"], name=f"{table}_did_sort_idx"),
        BrinIndex(fields=["indexed_at"], name=f"{table}_indexed_brin"),
        *extra,
    ]


class Post(RepoRecord):
    collection = "app.bsky.feed.post"

    text = models.TextField(blank=True, default="")
    langs = models.JSONField(default=list, blank=True)
    reply_root_uri = models.TextField(null=True, blank=True)
    reply_parent_uri = models.TextField(null=True, blank=True)
    quote_uri = models.TextField(null=True, blank=True)
    embed_type = models.TextField(null=True, blank=True)
    like_count = models.IntegerField(default=0)
    repost_count = models.IntegerField(default=0)
    reply_count = models.IntegerField(default=0)
    quote_count = models.IntegerField(default=0)

    class Meta:
        indexes = record_indexes(
            "post",
            models.Index(fields=["reply_root_uri"], name="post_reply_root_idx",
                         condition=models.Q(reply_root_uri__isnull=False)),
            models.Index(fields=["reply_parent_uri"], name="post_reply_parent_idx",
                         condition=models.Q(reply_parent_uri__isnull=False)),
            models.Index(fields=["quote_uri", "-sort_at", "-uri"], name="post_quote_sort_idx",
                         condition=models.Q(quote_uri__isnull=False)),
            GinIndex(SearchVector("text", config="simple"), name="post_text_search"),
        )


class Like(RepoRecord):
    collection = "app.bsky.feed.like"

    subject_uri = models.TextField()
    subject_cid = models.TextField(blank=True, default="")

    class Meta:
        indexes = record_indexes(
            "like", models.Index(fields=["subject_uri", "-sort_at", "-uri"], name="like_subject_sort_idx")
        )


class Repost(RepoRecord):
    collection = "app.bsky.feed.repost"

    subject_uri = models.TextField()
    subject_cid = models.TextField(blank=True, default="")

    class Meta:
        indexes = record_indexes(
            "repost", models.Index(fields=["subject_uri", "-sort_at", "-uri"], name="repost_subject_sort_idx")
        )


class Follow(RepoRecord):
    collection = "app.bsky.graph.follow"

    subject_did = models.TextField()

    class Meta:
        indexes = record_indexes(
            "follow",
            models.Index(fields=["subject_did", "-sort_at", "-uri"], name="follow_subject_sort_idx"),
            # Who follows whom between two given accounts (relationships, follows of hidden accounts).
            models.Index(fields=["did", "subject_did"], name="follow_did_subject_idx"),
        )


class Block(RepoRecord):
    collection = "app.bsky.graph.block"

    subject_did = models.TextField()

    class Meta:
        indexes = record_indexes("block", models.Index(fields=["subject_did"], name="block_subject_idx"))


class Profile(RepoRecord):
    collection = "app.bsky.actor.profile"

    display_name = models.TextField(null=True, blank=True)
    description = models.TextField(null=True, blank=True)
    avatar_cid = models.TextField(null=True, blank=True)
    banner_cid = models.TextField(null=True, blank=True)
    pinned_post_uri = models.TextField(null=True, blank=True)

    class Meta:
        indexes = record_indexes("profile")


class List(RepoRecord):
    collection = "app.bsky.graph.list"

    name = models.TextField(blank=True, default="")
    purpose = models.TextField(blank=True, default="")
    description = models.TextField(null=True, blank=True)

    class Meta:
        indexes = record_indexes("list")


class ListItem(RepoRecord):
    collection = "app.bsky.graph.listitem"

    list_uri = models.TextField()
    subject_did = models.TextField()

    class Meta:
        indexes = record_indexes(
            "listitem",
            models.Index(fields=["list_uri", "-sort_at", "-uri"], name="listitem_list_sort_idx"),
            models.Index(fields=["subject_did"], name="listitem_subject_idx"),
        )


class ListBlock(RepoRecord):
    collection = "app.bsky.graph.listblock"

    subject_uri = models.TextField()

    class Meta:
        indexes = record_indexes("listblock", models.Index(fields=["subject_uri"], name="listblock_subject_idx"))


class FeedGenerator(RepoRecord):
    collection = "app.bsky.feed.generator"

    service_did = models.TextField(blank=True, default="")
    display_name = models.TextField(blank=True, default="")
    description = models.TextField(null=True, blank=True)

    class Meta:
        indexes = record_indexes("feedgen")


class Threadgate(RepoRecord):
    collection = "app.bsky.feed.threadgate"

    post_uri = models.TextField()

    class Meta:
        indexes = record_indexes("threadgate", models.Index(fields=["post_uri"], name="threadgate_post_idx"))


class Postgate(RepoRecord):
    collection = "app.bsky.feed.postgate"

    post_uri = models.TextField()

    class Meta:
        indexes = record_indexes("postgate", models.Index(fields=["post_uri"], name="postgate_post_idx"))


class StarterPack(RepoRecord):
    collection = "app.bsky.graph.starterpack"

    name = models.TextField(blank=True, default="")
    list_uri = models.TextField(blank=True, default="")

    class Meta:
        indexes = record_indexes("starterpack")


class LabelerService(RepoRecord):
    collection = "app.bsky.labeler.service"

    class Meta:
        indexes = record_indexes("labeler")


class Verification(RepoRecord):
    collection = "app.bsky.graph.verification"

    subject_did = models.TextField()
    handle = models.TextField(blank=True, default="")
    display_name = models.TextField(blank=True, default="")

    class Meta:
        indexes = record_indexes(
            "verification", models.Index(fields=["subject_did"], name="verification_subject_idx")
        )


class ActorStatusRecord(RepoRecord):
    collection = "app.bsky.actor.status"

    status = models.TextField(blank=True, default="")
    duration_minutes = models.IntegerField(null=True, blank=True)

    class Meta:
        verbose_name = "actor status record"
        indexes = record_indexes("actorstatus")


class NotificationDeclaration(RepoRecord):
    collection = "app.bsky.notification.declaration"

    allow_subscriptions = models.TextField(blank=True, default="")

    class Meta:
        indexes = record_indexes("notifdecl")


class ChatDeclaration(RepoRecord):
    collection = "chat.bsky.actor.declaration"

    allow_incoming = models.TextField(blank=True, default="")

    class Meta:
        indexes = record_indexes("chatdecl")


class GenericRecord(RepoRecord):
    """Records of every collection that has no table of its own."""

    collection = models.TextField()  # type: ignore[assignment]

    class Meta:
        indexes = record_indexes(
            "generic", models.Index(fields=["collection", "did"], name="generic_collection_idx")
        )


class RecordTombstone(models.Model):
    """A deleted record's URI and the seq of its delete, so that an older create cannot bring it back."""

    uri = models.TextField(primary_key=True)
    did = models.TextField()
    seq = models.BigIntegerField()
    deleted_at = models.DateTimeField(db_default=Now())

    class Meta:
        indexes = [
            models.Index(fields=["did"], name="tombstone_did_idx"),
            BrinIndex(fields=["deleted_at"], name="tombstone_deleted_brin"),
        ]

    def __str__(self) -> str:
        return self.uri


class RowCountDelta(models.Model):
    """A change in the number of stored rows, written by the transaction that made it.

    Exact counts per collection (key: the NSID) and of actors (key: ``ACTOR_KEY``) without a COUNT(*)
    over tables of 100M rows: the count is the sum of a key's deltas. Workers fold the rows of a key
    into one from time to time, so the table stays small.
    """

    ACTOR_KEY = "actor"

    key = models.TextField()
    delta = models.BigIntegerField()

    def __str__(self) -> str:
        return f"{self.key}: {self.delta:+d}"


RECORD_MODELS: tuple[type[RepoRecord], ...] = (
    Post, Like, Repost, Follow, Block, Profile, List, ListItem, ListBlock, FeedGenerator, Threadgate,
    Postgate, StarterPack, LabelerService, Verification, ActorStatusRecord, NotificationDeclaration,
    ChatDeclaration,
)
MODEL_BY_COLLECTION: dict[str, type[RepoRecord]] = {model.collection: model for model in RECORD_MODELS}
