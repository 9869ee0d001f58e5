"""The AppView schema: actors, one table per indexed collection, a generic record table, tombstones
that keep deletes ordered, and the ledger of row counts (the durable cursor is ``pipeline.models``).

Every record row carries ``rev``, the rev of the commit that last wrote it (a repo's revs grow with each
commit and are the same on every relay), and ``seq``, the relay seq that delivered it (for tracing). Writes
only apply when their rev is newer than the row's, than any tombstone for the same URI and than the repo's
``floor_rev``, which is what makes indexing idempotent and independent of the order in which workers commit
events and of the relay that delivered them.
"""

from typing import ClassVar

from django.contrib.postgres.fields import ArrayField
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


# Accounts readers do not see, nor their likes, reposts, replies, quotes and follows in anyone's counts.
HIDDEN_STATUSES: tuple[str, ...] = tuple(
    status.value for status in (ActorStatus.DEACTIVATED, ActorStatus.TAKENDOWN, ActorStatus.SUSPENDED,
                                ActorStatus.DELETED))


class RepoSyncStatus(models.TextChoices):
    """Whether the index follows the repository commit by commit (SPEC section 12)."""

    ACTIVE = "active"
    DESYNCHRONIZED = "desynchronized"  # a commit failed a check or was missed: queued for resync
    RESYNCING = "resyncing"  # its repository is being fetched from its PDS
    ERROR = "error"  # the last resync failed: tried again later (resync_after)


class Actor(models.Model):
    did = models.TextField(primary_key=True)
    handle = models.TextField(null=True, blank=True)
    # When the DID document that gave ``handle`` was fetched: a newer resolution wins, whatever the event order.
    handle_checked_at = models.DateTimeField(null=True, blank=True)
    active = models.BooleanField(default=True)
    status = models.TextField(choices=ActorStatus.choices, default=ActorStatus.ACTIVE)
    # Where the #account event that set active/status stands (events.ParsedEvent.position): a later one wins.
    status_position = models.TextField(blank=True, default="")
    # The highest rev of a commit applied: the baseline a commit's ``since`` is checked against.
    rev = models.TextField(null=True, blank=True)
    # Writes at or below this rev are refused: the repository's state up to it is already stored (a resync) or
    # gone (the account was deleted).
    floor_rev = models.TextField(blank=True, default="")
    # Revs that applied commits name as their ``since`` and that no applied commit had: commits not seen yet.
    missing_revs = ArrayField(models.TextField(), default=list, blank=True)
    missing_since = models.DateTimeField(null=True, blank=True)
    sync_status = models.TextField(choices=RepoSyncStatus.choices, default=RepoSyncStatus.ACTIVE)
    sync_reason = models.TextField(blank=True, default="")  # why it was marked, or the last resync error
    sync_tries = models.IntegerField(default=0)  # resyncs failed in a row
    resync_after = models.DateTimeField(null=True, blank=True)  # queued: to be resynced from this time
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
            models.Index(fields=["sync_status"], name="actor_sync_status_idx",
                         condition=~models.Q(sync_status="active")),
            models.Index(fields=["resync_after"], name="actor_resync_queue_idx",
                         condition=models.Q(resync_after__isnull=False)),
            models.Index(fields=["missing_since"], name="actor_missing_revs_idx",
                         condition=models.Q(missing_since__isnull=False)),
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
    """A deleted record's URI and the rev of the commit that deleted it, so that an older create cannot bring
    it back. Collected once older than TOMBSTONE_RETENTION or at or below the repo's floor_rev
    (docs/ARCHITECTURE.md, "Order independence")."""

    uri = models.TextField(primary_key=True)
    did = models.TextField()
    rev = models.TextField()
    deleted_at = models.DateTimeField(db_default=Now())

    class Meta:
        indexes = [
            models.Index(fields=["did"], name="tombstone_did_idx"),
            BrinIndex(fields=["deleted_at"], name="tombstone_deleted_brin"),
        ]

    def __str__(self) -> str:
        return self.uri


class HiddenShare(models.Model):
    """The part of a post's or an actor's counts that comes from hidden accounts (HIDDEN_STATUSES), which
    readers take out: kept by the worker as rows change and as accounts are hidden or shown again, so that a
    reader needs one lookup by key instead of counting those accounts' records. Only keys with a share have
    a row. ``key`` is a post URI (likes .. quotes: by hidden accounts) or an actor DID (followers: hidden
    accounts following it; follows: the hidden accounts it follows)."""

    key = models.TextField(primary_key=True)
    like_count = models.IntegerField(default=0)
    repost_count = models.IntegerField(default=0)
    reply_count = models.IntegerField(default=0)
    quote_count = models.IntegerField(default=0)
    followers_count = models.IntegerField(default=0)
    follows_count = models.IntegerField(default=0)

    def __str__(self) -> str:
        return self.key


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


class BackfillState(models.TextChoices):
    PENDING = "pending"
    IN_PROGRESS = "in_progress"  # claimed by a run (``claimed_by``) until ``due_at``, which the run keeps renewing
    DONE = "done"  # stored at ``rev``
    FAILED = "failed"  # ``error``; tried again from ``due_at`` unless ``tries`` reached BACKFILL_MAX_TRIES


class BackfillRepo(models.Model):
    """A repository that ``manage.py backfill`` loads whole from its PDS, and where its load stands (SPEC
    section 12). The table is the backfill's queue: a run adds its scope's repositories and loads every one
    that is due; a repository done is never loaded again."""

    did = models.TextField(primary_key=True)
    state = models.TextField(choices=BackfillState.choices, db_default=BackfillState.PENDING)
    # When a run may take it: pending, from when it was queued; in progress, when the claim's lease ends;
    # failed, when it is to be tried again. NULL: nothing left to do (done, or failed for good).
    due_at = models.DateTimeField(null=True, blank=True, db_default=Now())
    claimed_by = models.TextField(blank=True, db_default="")  # the run holding it (in progress)
    rev = models.TextField(blank=True, db_default="")  # the rev of the repository stored
    records = models.BigIntegerField(db_default=0)  # records stored
    error = models.TextField(blank=True, db_default="")  # the last failure: "<reason>: <detail>"
    tries = models.IntegerField(db_default=0)  # failed loads in a row
    queued_at = models.DateTimeField(db_default=Now())
    started_at = models.DateTimeField(null=True, blank=True)  # the last claim
    finished_at = models.DateTimeField(null=True, blank=True)  # done, or the last failure

    class Meta:
        indexes = [
            models.Index(fields=["due_at"], name="backfill_due_idx", condition=models.Q(due_at__isnull=False)),
            models.Index(fields=["state"], name="backfill_state_idx", condition=~models.Q(state="done")),
        ]

    def __str__(self) -> str:
        return self.did


class BackfillListing(models.Model):
    """How far the listing of a scope's repositories from a relay has come (``listRepos``, or
    ``listReposByCollection`` for a signal collection), so that a run that stops continues the listing where
    it was."""

    scope = models.TextField(primary_key=True)  # "<relay host> <method> [collection]"
    cursor = models.TextField(blank=True, db_default="")  # the relay's cursor for the next page
    complete = models.BooleanField(db_default=False)  # the last page was read
    repos = models.BigIntegerField(db_default=0)  # repositories listed so far
    updated_at = models.DateTimeField(db_default=Now())

    def __str__(self) -> str:
        return self.scope
