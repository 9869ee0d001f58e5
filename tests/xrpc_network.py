"""A small network indexed through the real pipeline (frames in firehose:events, a worker, PostgreSQL),
for the read API's tests: accounts with profiles and handles, posts with every embed type, a thread with
a hidden and a missing reply, likes, reposts, follows, a block, lists, a feed generator, a starter pack,
and accounts in every moderation state.

``build()`` returns a ``Network`` naming what it made, so that tests can ask for it by meaning."""

from dataclasses import dataclass, field
from typing import Any

import libipld
from django.utils import timezone

from harness.events import commit_frame, push
from identity.cache import store_identity
from identity.resolver import Identity
from pipeline import redis_store
from protocol.cid import cid_for_block
from tests.worker_helpers import drain, event_frame

RAW_CID_PREFIX = bytes((1, 0x55, 0x12, 32))
BASE_TIME = "2025-03-01T12:00:00.000Z"
MISSING_CID = "bafyreigaqcu4loopk4dkd57c6zulsivi6lnsrwkpyt5t3khnixglnvwx2i"  # of a post never indexed


def confirmed_handle(actor: str, handle: str) -> None:
    """What resolving the actor's DID document and confirming its handle leaves in the identity cache, from
    which the worker takes actors' handles."""
    document = {"id": actor, "alsoKnownAs": [f"at://{handle}"]}
    store_identity(Identity(did=actor, handle=handle, signing_key=None, pds=None, fetched_at=timezone.now(),
                            document=document), ttl=3600)


def did(name: str) -> str:
    return "did:plc:" + (name + "x" * 24)[:24]


def when(minute: int) -> str:
    return f"2025-03-01T{12 + minute // 60:02d}:{minute % 60:02d}:00.000Z"


def blob(seed: int, mime: str = "image/jpeg") -> dict[str, Any]:
    return {"$type": "blob", "ref": RAW_CID_PREFIX + bytes([seed % 256]) * 32, "mimeType": mime, "size": 1000 + seed}


@dataclass
class Network:
    alice: str = did("alice")
    bob: str = did("bob")
    carol: str = did("carol")
    dave: str = did("dave")  # deactivated
    erin: str = did("erin")  # taken down
    frank: str = did("frank")  # suspended
    gina: str = did("gina")  # blocks alice
    handles: dict[str, str] = field(default_factory=dict)
    uris: dict[str, str] = field(default_factory=dict)
    cids: dict[str, str] = field(default_factory=dict)
    seq: int = 0

    def uri(self, name: str) -> str:
        return self.uris[name]


class _Builder:
    def __init__(self) -> None:
        self.network = Network()
        self.frames: list[tuple[int, bytes]] = []
        self.rev = 0

    def _next_seq(self) -> int:
        self.network.seq += 1
        return self.network.seq

    def _tid(self) -> str:
        self.rev += 1
        alphabet = "234567abcdefghijklmnopqrstuvwxyz"
        value, chars = 1_740_000_000_000_000 * 1024 + self.rev, []
        for _ in range(13):
            chars.append(alphabet[value & 31])
            value >>= 5
        return "".join(reversed(chars))

    def create(self, name: str, actor: str, collection: str, record: dict[str, Any], rkey: str | None = None) -> str:
        rkey = rkey or self._tid()
        record = {"$type": collection, **record}
        seq = self._next_seq()
        self.frames.append((seq, commit_frame(seq, [("create", f"{collection}/{rkey}", record)], did=actor,
                                              rev=self._tid())))
        cid = libipld.encode_cid(cid_for_block(libipld.encode_dag_cbor(record)))
        uri = f"at://{actor}/{collection}/{rkey}"
        self.network.uris[name] = uri
        self.network.cids[name] = cid
        return uri

    def strong_ref(self, name: str) -> dict[str, str]:
        return {"uri": self.network.uris[name], "cid": self.network.cids[name]}

    def event(self, event_type: str, actor: str, **fields: Any) -> None:
        self.frames.append((self._next_seq(), event_frame(self.network.seq, event_type, actor, **fields)))


def build(*, extra_likes: int = 0, extra_follows: int = 0) -> Network:
    """Indexes the network; ``extra_likes`` more likes of ``popular`` and ``extra_follows`` more followers of
    alice come from accounts of their own (for paging)."""
    b = _Builder()
    n = b.network
    names = {n.alice: "alice", n.bob: "bob", n.carol: "carol", n.dave: "dave", n.erin: "erin", n.frank: "frank",
             n.gina: "gina"}
    for actor, name in names.items():
        handle = f"{name}.test"
        n.handles[actor] = handle
        confirmed_handle(actor, handle)
        b.create(f"profile:{name}", actor, "app.bsky.actor.profile",
                 {"displayName": name.title(), "description": f"I am {name}", "avatar": blob(len(name)),
                  "banner": blob(len(name) + 50), "createdAt": BASE_TIME}, rkey="self")
    b.create("hello", n.alice, "app.bsky.feed.post", {"text": "hello world from alice", "langs": ["en"],
                                                       "createdAt": when(1)})
    b.create("images", n.alice, "app.bsky.feed.post", {
        "text": "two pictures", "createdAt": when(2),
        "embed": {"$type": "app.bsky.embed.images", "images": [
            {"image": blob(7), "alt": "a cat", "aspectRatio": {"width": 4, "height": 3}},
            {"image": blob(8), "alt": ""}]}})
    b.create("external", n.bob, "app.bsky.feed.post", {
        "text": "a link", "createdAt": when(3),
        "embed": {"$type": "app.bsky.embed.external", "external": {
            "uri": "https://example.com/page", "title": "Example", "description": "A page", "thumb": blob(9)}}})
    b.create("video", n.bob, "app.bsky.feed.post", {
        "text": "a video", "createdAt": when(4),
        "embed": {"$type": "app.bsky.embed.video", "video": blob(10, "video/mp4"), "alt": "waves",
                  "aspectRatio": {"width": 16, "height": 9}}})
    b.create("quote", n.carol, "app.bsky.feed.post", {
        "text": "quoting alice", "createdAt": when(5),
        "embed": {"$type": "app.bsky.embed.record", "record": b.strong_ref("hello")}})
    b.create("quote_with_media", n.carol, "app.bsky.feed.post", {
        "text": "quote and picture", "createdAt": when(6),
        "embed": {"$type": "app.bsky.embed.recordWithMedia",
                  "record": {"$type": "app.bsky.embed.record", "record": b.strong_ref("images")},
                  "media": {"$type": "app.bsky.embed.images", "images": [{"image": blob(11), "alt": "dog"}]}}})
    b.create("quote_of_missing", n.carol, "app.bsky.feed.post", {
        "text": "quoting nothing", "createdAt": when(7),
        "embed": {"$type": "app.bsky.embed.record", "record": {
            "uri": f"at://{n.bob}/app.bsky.feed.post/3jzfcijpj2z2a", "cid": MISSING_CID}}})
    b.create("takendown_post", n.erin, "app.bsky.feed.post", {"text": "erin was here", "createdAt": when(8)})
    b.create("quote_of_hidden", n.carol, "app.bsky.feed.post", {
        "text": "quoting erin", "createdAt": when(9),
        "embed": {"$type": "app.bsky.embed.record", "record": b.strong_ref("takendown_post")}})
    b.create("gina_post", n.gina, "app.bsky.feed.post", {"text": "gina speaks", "createdAt": when(10)})
    b.create("alice_quotes_gina", n.alice, "app.bsky.feed.post", {
        "text": "alice quotes gina", "createdAt": when(11),
        "embed": {"$type": "app.bsky.embed.record", "record": b.strong_ref("gina_post")}})
    b.create("detached_target", n.bob, "app.bsky.feed.post", {"text": "do not quote me", "createdAt": when(12)})
    b.create("detached_quote", n.carol, "app.bsky.feed.post", {
        "text": "quoting bob anyway", "createdAt": when(13),
        "embed": {"$type": "app.bsky.embed.record", "record": b.strong_ref("detached_target")}})
    target_rkey = n.uris["detached_target"].rsplit("/", 1)[-1]
    b.create("postgate", n.bob, "app.bsky.feed.postgate", {
        "post": n.uris["detached_target"], "detachedEmbeddingUris": [n.uris["detached_quote"]], "createdAt": when(14)},
        rkey=target_rkey)
    # A thread: root by alice, replies by bob (hidden by the threadgate), carol, alice herself, and one
    # below a reply that is not indexed.
    b.create("root", n.alice, "app.bsky.feed.post", {"text": "a thread starts", "createdAt": when(20)})
    root = b.strong_ref("root")
    b.create("reply_carol", n.carol, "app.bsky.feed.post", {
        "text": "carol replies", "createdAt": when(21), "reply": {"root": root, "parent": root}})
    b.create("reply_bob", n.bob, "app.bsky.feed.post", {
        "text": "bob replies (hidden)", "createdAt": when(22), "reply": {"root": root, "parent": root}})
    b.create("reply_alice", n.alice, "app.bsky.feed.post", {
        "text": "alice replies to herself", "createdAt": when(23), "reply": {"root": root, "parent": root}})
    b.create("reply_nested", n.bob, "app.bsky.feed.post", {
        "text": "bob answers carol", "createdAt": when(24),
        "reply": {"root": root, "parent": b.strong_ref("reply_carol")}})
    missing = {"uri": f"at://{n.carol}/app.bsky.feed.post/3jzfcijpj2z2b",
               "cid": MISSING_CID}
    b.create("reply_to_missing", n.bob, "app.bsky.feed.post", {
        "text": "answer to a lost post", "createdAt": when(25), "reply": {"root": root, "parent": missing}})
    b.create("reply_erin", n.erin, "app.bsky.feed.post", {
        "text": "erin replies", "createdAt": when(26), "reply": {"root": root, "parent": root}})
    b.create("threadgate", n.alice, "app.bsky.feed.threadgate", {
        "post": n.uris["root"], "hiddenReplies": [n.uris["reply_bob"]], "createdAt": when(27)},
        rkey=n.uris["root"].rsplit("/", 1)[-1])
    # Interactions.
    for liker in (n.bob, n.carol, n.erin):
        b.create(f"like:{names[liker]}", liker, "app.bsky.feed.like",
                 {"subject": b.strong_ref("hello"), "createdAt": when(30)})
    b.create("repost:bob", n.bob, "app.bsky.feed.repost", {"subject": b.strong_ref("hello"), "createdAt": when(31)})
    b.create("repost:carol", n.carol, "app.bsky.feed.repost", {"subject": b.strong_ref("images"),
                                                               "createdAt": when(32)})
    for follower, subject in ((n.bob, n.alice), (n.carol, n.alice), (n.erin, n.alice), (n.alice, n.bob),
                              (n.alice, n.erin), (n.dave, n.alice)):
        b.create(f"follow:{names[follower]}:{names[subject]}", follower, "app.bsky.graph.follow",
                 {"subject": subject, "createdAt": when(33)})
    b.create("block:gina:alice", n.gina, "app.bsky.graph.block", {"subject": n.alice, "createdAt": when(34)})
    # Lists, a feed generator and a starter pack.
    b.create("curatelist", n.alice, "app.bsky.graph.list", {
        "name": "Friends", "purpose": "app.bsky.graph.defs#curatelist", "description": "people I like",
        "createdAt": when(35)})
    b.create("modlist", n.alice, "app.bsky.graph.list", {
        "name": "Muted", "purpose": "app.bsky.graph.defs#modlist", "createdAt": when(36)})
    for member in (n.bob, n.carol, n.erin):
        b.create(f"listitem:{names[member]}", n.alice, "app.bsky.graph.listitem",
                 {"subject": member, "list": n.uris["curatelist"], "createdAt": when(37)})
    b.create("feedgen", n.alice, "app.bsky.feed.generator", {
        "did": "did:web:feeds.example.com", "displayName": "Alice's feed", "description": "the best posts",
        "avatar": blob(12), "createdAt": when(38)})
    b.create("feedgen_like", n.bob, "app.bsky.feed.like", {"subject": b.strong_ref("feedgen"), "createdAt": when(39)})
    b.create("starterpack", n.alice, "app.bsky.graph.starterpack", {
        "name": "Start here", "list": n.uris["curatelist"], "feeds": [{"uri": n.uris["feedgen"]}],
        "createdAt": when(40)})
    b.create("pinned", n.alice, "app.bsky.feed.post", {"text": "read this first", "createdAt": when(41)})
    b.create("profile:alice", n.alice, "app.bsky.actor.profile", {
        "displayName": "Alice", "description": "I am alice", "avatar": blob(5), "banner": blob(55),
        "pinnedPost": b.strong_ref("pinned"), "createdAt": BASE_TIME}, rkey="self")
    b.create("dave_post", n.dave, "app.bsky.feed.post", {"text": "dave before leaving", "createdAt": when(42)})
    b.create("frank_post", n.frank, "app.bsky.feed.post", {"text": "frank before suspension", "createdAt": when(43)})
    b.create("frank_like", n.frank, "app.bsky.feed.like", {"subject": b.strong_ref("hello"), "createdAt": when(44)})
    for index in range(extra_likes):
        liker = did(f"liker{index:05d}")
        b.create(f"extra_like:{index}", liker, "app.bsky.feed.like",
                 {"subject": b.strong_ref("hello"), "createdAt": when(45)})
    for index in range(extra_follows):
        follower = did(f"follower{index:05d}")
        b.create(f"extra_follow:{index}", follower, "app.bsky.graph.follow",
                 {"subject": n.alice, "createdAt": when(46)})
    # Moderation states.
    b.event("#account", n.dave, active=False, status="deactivated")
    b.event("#account", n.erin, active=False, status="takendown")
    b.event("#account", n.frank, active=False, status="suspended")
    push(redis_store.connect(), b.frames)
    drain(batch_size=1000)
    return n
