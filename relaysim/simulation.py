"""Synthetic relay events and replay sources for the local relay simulator (``run_relay_sim``).

Plain Python API, usable without a server (tests, worker benchmarks)::

    from relaysim.simulation import SyntheticFirehose, load_replay, read_recording, write_recording

    firehose = SyntheticFirehose(seed=7, start_seq=1)
    for seq, frame in firehose.frames(1000):    # the next 1000 events: (seq, header+body DAG-CBOR bytes)
        ...
    more = list(firehose.frames(500))            # continues where the previous call stopped (seq 1001...)

- ``SyntheticFirehose(seed=0, start_seq=1, *, actors=5000, wall_clock=False)``: an endless, reproducible
  stream of realistic ``subscribeRepos`` frames. The same ``seed`` and ``start_seq`` give the same bytes at
  the same seq on every run (event times come from a synthetic clock that starts at 2025-01-01T00:00:00Z
  and advances 1 ms per event; ``wall_clock=True`` stamps events with the real time instead, for demos,
  and gives up that reproducibility). Seqs are consecutive from ``start_seq``.
- The mix of events is ``EVENT_MIX`` (fractions of events): about 60% likes, 14% posts (replies, quotes,
  images, external links, facets with correct UTF-8 byte offsets, langs, text in several scripts),
  11% reposts, 9% follows, and the rest: blocks, profile create then update, deletes of records created
  earlier in the stream, ``#identity`` (handle changes), ``#account`` (active, deactivated, takendown,
  suspended, deleted), ``#sync``, records of other collections, lists, list items, list blocks, feed
  generators, threadgates, postgates, starter packs, and multi-op commits.
- Every ``#commit`` carries a CAR (byte for byte what ``wire.encode_car`` makes) holding its commit
  block and each created or updated record block, with ``ops[].cid`` and ``commit`` the CIDs of those
  blocks.
- ``write_recording(path, frames)`` / ``read_recording(path)``: the binary recording format, a sequence of
  ``[u32 little-endian length][frame bytes]``.
- ``load_replay(path, include_dropped=False)``: the frames of a fixture scenario (``.json``, see
  ``relaysim.scenarios``; messages a correct relay would drop are left out unless ``include_dropped``)
  or of a recording (any other extension), as ``ReplayFrame(seq, frame)``.
- ``malformed_frame(kind, seq=..., frame=..., rng=...)``: the bad frames of the fault injection, one per
  name in ``MALFORMED_KINDS``.
- ``renumbered(frame, seq)``: the same event under another seq, as a second relay sends it.

The commits here are fake (a random MST root and signature): cheap, for load. ``relaysim.signed.SignedFirehose``
is the same stream with real, signed repositories that an indexer can verify and resync.
"""

import base64
import bisect
import random
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libipld

from protocol.cid import DAG_CBOR_CID_PREFIX, cid_for_block
from protocol.frames import MAX_FRAME_BYTES, FrameError, decode_frame
from protocol.testing import car_of_cids, encode_frame
from relaysim.scenarios import load_scenario

EVENT_MIX: dict[str, float] = {
    "like": 0.60,
    "post": 0.14,
    "repost": 0.11,
    "follow": 0.09,
    "delete": 0.020,
    "block": 0.010,
    "profile": 0.008,
    "graph": 0.006,  # lists, list items, list blocks, feed generators, threadgates, postgates, starter packs
    "identity": 0.004,
    "other": 0.004,  # records of collections outside app.bsky
    "multi": 0.004,  # commits of several ops
    "account": 0.003,
    "sync": 0.001,
}

EPOCH_US = 1_735_689_600_000_000  # 2025-01-01T00:00:00Z
EVENT_STEP_US = 1000
POST_POOL = 20_000
DELETABLE_POOL = 50_000
EARLIER_POSTS = 3000  # posts from before the stream started, so that the first likes have subjects
TEMPLATES = 800

_S32 = "234567abcdefghijklmnopqrstuvwxyz"
_S32_PAIRS = [_S32[i >> 5] + _S32[i & 31] for i in range(1024)]
_RAW_CODEC = 0x55

_COMMIT = {"op": 1, "t": "#commit"}
COMMIT_HEADER = libipld.encode_dag_cbor(_COMMIT)
SYNC_HEADER = {"op": 1, "t": "#sync"}
_IDENTITY = {"op": 1, "t": "#identity"}
_ACCOUNT = {"op": 1, "t": "#account"}

# CJK text uses full-width punctuation, as real posts do.
_SENTENCES: dict[str, list[str]] = {
    "en": [
        "Good morning everyone!",
        "Just shipped a new release.",
        "Can't believe how fast this week went.",
        "Reading about decentralised social networks today.",
        "Hot take: tabs are better than spaces.",
        "Anyone else watching the game tonight?",
        "Coffee first, then code.",
        "This thread is a goldmine.",
        "Finally fixed that bug after three days.",
        "The sunset tonight was unreal.",
    ],
    "ja": [
        "おはようございます！",  # noqa: RUF001
        "今日はいい天気ですね。",
        "新しいブログ記事を書きました。",
        "週末は京都に行きます。",
    ],
    "zh": ["今天天气很好。", "我刚刚完成了一个项目。", "周末愉快！", "这本书真的值得一读。"],  # noqa: RUF001
    "ko": ["안녕하세요!", "오늘 정말 좋은 날이에요.", "새 프로젝트를 시작했어요."],
    "ar": ["صباح الخير للجميع", "أحب القراءة في المساء", "هذا رائع جدا"],
    "he": ["בוקר טוב לכולם", "שבת שלום", "איזה יום יפה היום"],
    "pt": ["Bom dia pessoal!", "Alguém mais assistindo o jogo?", "Que dia lindo hoje."],
    "de": ["Guten Morgen zusammen!", "Schönes Wochenende euch allen.", "Endlich Feierabend."],
    "es": ["¡Hola a todos!", "Qué día tan bonito.", "Acabo de terminar el libro."],
    "fr": ["Bonne journée à tous !", "J'ai enfin terminé ce livre.", "Quel temps magnifique aujourd'hui."],
}
_LANGS = ["en"] * 10 + ["ja"] * 3 + ["pt"] * 2 + ["de", "es", "fr", "zh", "ko", "ar", "he"]
_EMOJI = ["🎉", "🔥", "😂", "❤️", "👩‍💻", "🏳️‍🌈", "🇯🇵", "✨", "🙏", "🐈"]
_TAGS = ["art", "photography", "books", "science", "python", "atproto", "猫", "música"]
_LINKS = [
    "https://example.com/articles/2025/hello-world",
    "https://atproto.com/specs/event-stream",
    "https://en.wikipedia.org/wiki/Decentralization",
    "https://blog.example.org/posts/rust-vs-python?ref=bsky",
    "https://news.example.net/world/2025/01/01/story.html",
]
_NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "niaj"]
_DISPLAY_NAMES = [
    "Alice 🌸",
    "Bob the Builder",
    "Carol ☕",
    "山田太郎",
    "Zoë Müller",
    "محمد",
    "דנה",
    "김민준",
    "Léa 🐈",
]
_BIOS = [
    "Software engineer. Opinions are my own.",
    "写真とコーヒーが好きです ☕📷",
    "Artist | she/her | 🏳️‍🌈",
    "مهندس برمجيات ومحب للكتب",
    "Ich poste über Bücher und Brettspiele.",
]
_OTHER_COLLECTIONS = [
    "xyz.statusphere.status",
    "com.whtwnd.blog.entry",
    "fyi.unravel.frontpage.post",
    "com.example.note",
]
_ACCOUNT_STATUSES = ((0.8, "deactivated"), (0.85, "takendown"), (0.88, "suspended"), (1.0, "deleted"))
_LIST_PURPOSES = ["app.bsky.graph.defs#curatelist", "app.bsky.graph.defs#modlist", "app.bsky.graph.defs#referencelist"]


_tid_prefix_key = -1
_tid_prefix = ""


def tid(microseconds: int, clock_id: int) -> str:
    """The 13-character base32-sortable TID of a microsecond timestamp and a 10-bit clock id."""
    global _tid_prefix_key, _tid_prefix
    v = (microseconds << 10) | (clock_id & 1023)
    pairs = _S32_PAIRS
    # The first five characters change about every 18 minutes of clock: reuse them.
    key = v >> 40
    if key != _tid_prefix_key:
        _tid_prefix_key = key
        _tid_prefix = _S32[(v >> 60) & 31] + pairs[(v >> 50) & 1023] + pairs[key & 1023]
    return _tid_prefix + pairs[(v >> 30) & 1023] + pairs[(v >> 20) & 1023] + pairs[(v >> 10) & 1023] + pairs[v & 1023]


def _blob(rng: random.Random, mime: str) -> dict[str, Any]:
    return {
        "$type": "blob",
        "ref": bytes((1, _RAW_CODEC, 0x12, 32)) + rng.randbytes(32),
        "mimeType": mime,
        "size": rng.randint(20_000, 900_000),
    }


def _facet(start: int, end: int, feature: dict[str, Any]) -> dict[str, Any]:
    return {"$type": "app.bsky.richtext.facet", "index": {"byteStart": start, "byteEnd": end}, "features": [feature]}


@dataclass(frozen=True, slots=True)
class PostTemplate:
    text: str
    facets: list[dict[str, Any]] | None
    langs: list[str] | None


def post_template(rng: random.Random, dids: Sequence[str], handles: Sequence[str]) -> "PostTemplate":
    """A post's text as people write them: sentences in several scripts, emoji, mentions of ``dids`` (by
    their ``handles``), links and tags, with facets at the right UTF-8 byte offsets."""
    lang = rng.choice(_LANGS)
    parts: list[str] = []
    facets: list[dict[str, Any]] = []
    size = 0

    def add(text: str) -> tuple[int, int]:
        nonlocal size
        start = size
        parts.append(text)
        size += len(text.encode())
        return start, size

    for index in range(rng.randint(1, 3)):
        if index:
            add(" ")
        add(rng.choice(_SENTENCES[lang]))
    if rng.random() < 0.25:
        add(" " + rng.choice(_EMOJI))
    if rng.random() < 0.2:
        mentioned = int(len(dids) * rng.random() ** 2)
        add(" ")
        start, end = add("@" + handles[mentioned])
        facets.append(
            _facet(start, end, {"$type": "app.bsky.richtext.facet#mention", "did": dids[mentioned]})
        )
    if rng.random() < 0.15:
        link = rng.choice(_LINKS)
        shown = link.split("://", 1)[1]
        if len(shown) > 28:
            shown = shown[:25] + "..."
        add(" ")
        start, end = add(shown)
        facets.append(_facet(start, end, {"$type": "app.bsky.richtext.facet#link", "uri": link}))
    if rng.random() < 0.1:
        tag = rng.choice(_TAGS)
        add(" ")
        start, end = add("#" + tag)
        facets.append(_facet(start, end, {"$type": "app.bsky.richtext.facet#tag", "tag": tag}))
    langs = [lang] if rng.random() < 0.9 else None
    return PostTemplate("".join(parts), facets or None, langs)


@dataclass(frozen=True, slots=True)
class PostRef:
    uri: str
    cid: str
    root_uri: str
    root_cid: str


class SyntheticFirehose:
    """A reproducible stream of realistic relay frames; see the module docstring."""

    def __init__(self, seed: int = 0, start_seq: int = 1, *, actors: int = 5000, wall_clock: bool = False) -> None:
        if start_seq < 1:
            raise ValueError("start_seq must be at least 1")
        if actors < 10:
            raise ValueError("actors must be at least 10")
        self._rng = random.Random(seed)
        self._next_seq = start_seq
        self._wall_clock = wall_clock
        self._us = EPOCH_US
        self._time = ""
        self._time_second = -1
        self._time_prefix = ""
        self._counter = 0
        self._dids: list[str] = []
        self._handles: list[str] = []
        self._revs: list[str | None] = []
        self._data: list[bytes | None] = []
        self._active: list[bool] = []
        self._has_profile: list[bool] = []
        self._singletons: set[tuple[int, str]] = set()  # (actor, collection) of created "self" records
        self._lists: dict[int, list[str]] = {}
        self._last_post: dict[int, tuple[str, str]] = {}  # actor -> (rkey, uri) of its latest post
        self._all_lists: list[str] = []
        self._actor_of: dict[str, int] = {}
        self._inactive: list[int] = []
        self._profiled: list[int] = []  # actors that created a profile (possibly since replaced: check)
        self._posts: list[PostRef] = []
        self._post_next = 0
        self._deletable: list[tuple[str, str, str]] = []  # (did, collection, rkey)
        for index in range(actors):
            self._add_actor(index)
        self._templates = [self._template() for _ in range(TEMPLATES)]
        for _ in range(EARLIER_POSTS):
            self._add_earlier_post()
        self._kinds = list(EVENT_MIX)
        self._cumulative: list[float] = []
        total = 0.0
        for weight in EVENT_MIX.values():
            total += weight
            self._cumulative.append(total)
        self._makers = {
            "like": self._like,
            "post": self._post,
            "repost": self._repost,
            "follow": self._follow,
            "delete": self._delete,
            "block": self._block,
            "profile": self._profile,
            "graph": self._graph,
            "identity": self._identity,
            "other": self._other,
            "multi": self._multi,
            "account": self._account,
            "sync": self._sync,
        }

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def frames(self, count: int | None = None) -> Iterator[tuple[int, bytes]]:
        """The next ``count`` events (endless when None) as (seq, frame bytes)."""
        produced = 0
        while count is None or produced < count:
            yield self._next()
            produced += 1

    # -- stream state -------------------------------------------------------------------------------

    def _next(self) -> tuple[int, bytes]:
        self._advance_clock()
        seq = self._next_seq
        self._next_seq += 1
        return seq, self._event(seq)

    def _event(self, seq: int) -> bytes:
        kind = self._kinds[bisect.bisect_right(self._cumulative, self._rng.random() * self._cumulative[-1])]
        return self._makers[kind](seq)

    def _advance_clock(self) -> None:
        if self._wall_clock:
            self._us = max(time.time_ns() // 1000, self._us + 64)
        else:
            self._us += EVENT_STEP_US
        second = self._us // 1_000_000
        if second != self._time_second:
            self._time_second = second
            self._time_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        self._time = f"{self._time_prefix}.{(self._us // 1000) % 1000:03d}Z"

    def _new_did(self) -> str:
        if self._rng.random() < 0.01:
            self._counter += 1
            return f"did:web:user{self._counter}.example.com"
        return "did:plc:" + base64.b32encode(self._rng.randbytes(15)).decode().lower()

    def _new_handle(self) -> str:
        self._counter += 1
        name = self._rng.choice(_NAMES)
        if self._rng.random() < 0.1:
            return f"{name}{self._counter}.example.dev"
        return f"{name}{self._counter}.bsky.social"

    def _add_actor(self, index: int) -> None:
        did = self._new_did()
        values = (did, self._new_handle(), None, None, True, False)
        if index == len(self._dids):
            for column, value in zip(self._columns(), values, strict=True):
                column.append(value)
        else:
            for column, value in zip(self._columns(), values, strict=True):
                column[index] = value
        self._actor_of[did] = index

    def _columns(self) -> tuple[list[Any], ...]:
        return (self._dids, self._handles, self._revs, self._data, self._active, self._has_profile)

    def _pick_actor(self) -> int:
        """An active actor; activity is skewed: a few actors make most events, as on the network."""
        count = len(self._dids)
        while True:
            index = int(count * self._rng.random() ** 3)
            if self._active[index]:
                return index

    def _pick_subject_did(self, actor: int) -> str:
        count = len(self._dids)
        index = int(count * self._rng.random() ** 4)
        if index == actor:
            index = (index + 1) % count
        return self._dids[index]

    def _pick_post(self) -> PostRef:
        posts = self._posts
        return posts[(self._post_next - 1 - int(len(posts) * self._rng.random() ** 2)) % len(posts)]

    def _remember_post(self, post: PostRef) -> None:
        if len(self._posts) < POST_POOL:
            self._posts.append(post)
            self._post_next = len(self._posts) % POST_POOL
        else:
            self._posts[self._post_next] = post
            self._post_next = (self._post_next + 1) % POST_POOL

    def _remember(self, did: str, collection: str, rkey: str) -> None:
        if len(self._deletable) < DELETABLE_POOL:
            self._deletable.append((did, collection, rkey))
        else:
            self._deletable[int(self._rng.random() * DELETABLE_POOL)] = (did, collection, rkey)

    def _add_earlier_post(self) -> None:
        actor = int(len(self._dids) * self._rng.random())
        rkey = tid(EPOCH_US - int(self._rng.random() * 86_400_000_000 * 30), actor)
        uri = f"at://{self._dids[actor]}/app.bsky.feed.post/{rkey}"
        cid = libipld.encode_cid(DAG_CBOR_CID_PREFIX + self._rng.randbytes(32))
        self._remember_post(PostRef(uri, cid, uri, cid))

    def _template(self) -> PostTemplate:
        return post_template(self._rng, self._dids, self._handles)

    # -- frames ----------------------------------------------------------------------------------------

    def _record_op(self, action: str, collection: str, rkey: str, record: dict[str, Any]) -> tuple[Any, ...]:
        block = libipld.encode_dag_cbor(record)
        return action, f"{collection}/{rkey}", block, cid_for_block(block)

    def _rkey(self, offset: int = 0) -> str:
        # Several records of one commit get distinct keys just below the commit's own rev.
        return tid(self._us - 1 - offset, self._counter & 1023)

    def _commit(self, seq: int, actor: int, ops: list[tuple[Any, ...]]) -> bytes:
        rng = self._rng
        did = self._dids[actor]
        rev = tid(self._us, actor)
        blocks: list[tuple[bytes, bytes]] = []
        op_list = []
        for action, path, block, cid in ops:
            op_list.append({"action": action, "path": path, "cid": cid})
            if block is not None:
                blocks.append((cid, block))
        # The MST is not simulated: its root is a random CID (its nodes are not in the CAR).
        data = DAG_CBOR_CID_PREFIX + rng.randbytes(32)
        commit_block = libipld.encode_dag_cbor(
            {"did": did, "version": 3, "data": data, "rev": rev, "prev": None, "sig": rng.randbytes(64)}
        )
        commit_cid = cid_for_block(commit_block)
        blocks.insert(0, (commit_cid, commit_block))
        body = {
            "seq": seq,
            "rebase": False,
            "tooBig": False,
            "repo": did,
            "commit": commit_cid,
            "rev": rev,
            "since": self._revs[actor],
            "blocks": car_of_cids([commit_cid], blocks),
            "ops": op_list,
            "blobs": [],
            "time": self._time,
        }
        previous_data = self._data[actor]
        if previous_data is not None:
            body["prevData"] = previous_data
        self._revs[actor] = rev
        self._data[actor] = data
        # Same bytes as encode_frame(_COMMIT, body), without re-encoding the constant header.
        return COMMIT_HEADER + libipld.encode_dag_cbor(body)

    def _create(self, actor: int, collection: str, record: dict[str, Any], rkey: str | None = None) -> tuple[Any, ...]:
        rkey = rkey or self._rkey()
        self._remember(self._dids[actor], collection, rkey)
        return self._record_op("create", collection, rkey, record)

    def _like(self, seq: int, collection: str = "app.bsky.feed.like") -> bytes:
        actor = self._pick_actor()
        post = self._pick_post()
        record = {"$type": collection, "subject": {"uri": post.uri, "cid": post.cid}, "createdAt": self._time}
        return self._commit(seq, actor, [self._create(actor, collection, record)])

    def _repost(self, seq: int) -> bytes:
        return self._like(seq, "app.bsky.feed.repost")

    def _follow(self, seq: int, collection: str = "app.bsky.graph.follow") -> bytes:
        actor = self._pick_actor()
        record = {"$type": collection, "subject": self._pick_subject_did(actor), "createdAt": self._time}
        return self._commit(seq, actor, [self._create(actor, collection, record)])

    def _block(self, seq: int) -> bytes:
        return self._follow(seq, "app.bsky.graph.block")

    def _post_op(self, actor: int, rkey: str | None = None) -> tuple[Any, ...]:
        rng = self._rng
        template = self._templates[int(rng.random() * TEMPLATES)]
        record: dict[str, Any] = {"$type": "app.bsky.feed.post", "text": template.text, "createdAt": self._time}
        if template.facets:
            record["facets"] = template.facets
        if template.langs:
            record["langs"] = template.langs
        root_uri = root_cid = None
        if rng.random() < 0.3:
            parent = self._pick_post()
            root_uri, root_cid = parent.root_uri, parent.root_cid
            record["reply"] = {
                "root": {"uri": root_uri, "cid": root_cid},
                "parent": {"uri": parent.uri, "cid": parent.cid},
            }
        embed = rng.random()
        if embed < 0.12:
            record["embed"] = self._images()
        elif embed < 0.17:
            external: dict[str, Any] = {
                "uri": rng.choice(_LINKS),
                "title": "A page worth reading",
                "description": "Préface, 第一章 and more.",
            }
            if rng.random() < 0.5:
                external["thumb"] = _blob(rng, "image/jpeg")
            record["embed"] = {"$type": "app.bsky.embed.external", "external": external}
        elif embed < 0.23:
            quoted = self._pick_post()
            record["embed"] = {"$type": "app.bsky.embed.record", "record": {"uri": quoted.uri, "cid": quoted.cid}}
        elif embed < 0.25:
            quoted = self._pick_post()
            record["embed"] = {
                "$type": "app.bsky.embed.recordWithMedia",
                "record": {"$type": "app.bsky.embed.record", "record": {"uri": quoted.uri, "cid": quoted.cid}},
                "media": self._images(),
            }
        if rng.random() < 0.01:
            record["labels"] = {"$type": "com.atproto.label.defs#selfLabels", "values": [{"val": "graphic-media"}]}
        rkey = rkey or self._rkey()
        op = self._create(actor, "app.bsky.feed.post", record, rkey)
        uri = f"at://{self._dids[actor]}/app.bsky.feed.post/{rkey}"
        cid = libipld.encode_cid(op[3])
        self._remember_post(PostRef(uri, cid, root_uri or uri, root_cid or cid))
        self._last_post[actor] = (rkey, uri)
        return op

    def _images(self) -> dict[str, Any]:
        rng = self._rng
        images = []
        for _ in range(1 + int(rng.random() ** 3 * 4)):
            width, height = rng.choice(((1200, 800), (800, 1200), (1000, 1000), (1920, 1080)))
            images.append(
                {
                    "alt": rng.choice(("", "A cat asleep on a keyboard", "夕焼けの写真", "Un gráfico de barras")),
                    "image": _blob(rng, "image/jpeg"),
                    "aspectRatio": {"width": width, "height": height},
                }
            )
        return {"$type": "app.bsky.embed.images", "images": images}

    def _post(self, seq: int) -> bytes:
        actor = self._pick_actor()
        return self._commit(seq, actor, [self._post_op(actor)])

    def _delete(self, seq: int) -> bytes:
        deletable = self._deletable
        while deletable:
            index = int(self._rng.random() * len(deletable))
            did, collection, rkey = deletable[index]
            deletable[index] = deletable[-1]
            deletable.pop()
            actor = self._actor_of.get(did)
            if actor is not None and self._active[actor]:
                return self._commit(seq, actor, [("delete", f"{collection}/{rkey}", None, None)])
        return self._like(seq)

    def _profile(self, seq: int) -> bytes:
        rng = self._rng
        actor = self._pick_actor()
        if self._profiled and rng.random() < 0.5:
            # Most profile writes on the network are updates of an existing profile.
            candidate = self._profiled[int(rng.random() * len(self._profiled))]
            if self._active[candidate] and self._has_profile[candidate]:
                actor = candidate
        record: dict[str, Any] = {
            "$type": "app.bsky.actor.profile",
            "displayName": rng.choice(_DISPLAY_NAMES),
            "description": rng.choice(_BIOS),
            "avatar": _blob(rng, "image/jpeg"),
            "createdAt": self._time,
        }
        if rng.random() < 0.5:
            record["banner"] = _blob(rng, "image/png")
        action = "update" if self._has_profile[actor] else "create"
        if action == "create":
            self._has_profile[actor] = True
            self._profiled.append(actor)
        return self._commit(seq, actor, [self._record_op(action, "app.bsky.actor.profile", "self", record)])

    def _new_list(self, actor: int, purpose: str | None = None, offset: int = 0) -> tuple[tuple[Any, ...], str]:
        rkey = self._rkey(offset)
        record = {
            "$type": "app.bsky.graph.list",
            "name": self._rng.choice(("Friends", "Science people", "Artistes", "日本の友達", "Spam accounts")),
            "purpose": purpose or self._rng.choice(_LIST_PURPOSES),
            "description": "A list made in the relay simulator",
            "createdAt": self._time,
        }
        uri = f"at://{self._dids[actor]}/app.bsky.graph.list/{rkey}"
        self._lists.setdefault(actor, []).append(uri)
        self._all_lists.append(uri)
        return self._create(actor, "app.bsky.graph.list", record, rkey), uri

    def _distinct_subjects(self, actor: int, count: int) -> list[str]:
        # Records of one commit must differ: two identical blocks would share one CID.
        subjects: dict[str, None] = {}
        while len(subjects) < count:
            subjects[self._pick_subject_did(actor)] = None
        return list(subjects)

    def _list_item(self, actor: int, list_uri: str, offset: int = 0, subject: str | None = None) -> tuple[Any, ...]:
        record = {
            "$type": "app.bsky.graph.listitem",
            "subject": subject or self._pick_subject_did(actor),
            "list": list_uri,
            "createdAt": self._time,
        }
        return self._create(actor, "app.bsky.graph.listitem", record, self._rkey(offset))

    def _gate(self, actor: int, collection: str, rkey: str, uri: str) -> tuple[Any, ...]:
        record: dict[str, Any] = {"$type": collection, "post": uri, "createdAt": self._time}
        if collection == "app.bsky.feed.threadgate":
            record["allow"] = [{"$type": "app.bsky.feed.threadgate#followingRule"}]
            record["hiddenReplies"] = []
        else:
            record["embeddingRules"] = [{"$type": "app.bsky.feed.postgate#disableRule"}]
            record["detachedEmbeddingUris"] = []
        return self._create(actor, collection, record, rkey)

    def _graph(self, seq: int) -> bytes:
        rng = self._rng
        actor = self._pick_actor()
        choice = rng.random()
        own_lists = self._lists.get(actor)
        if choice < 0.3 and own_lists:
            op = self._list_item(actor, rng.choice(own_lists))
        elif choice < 0.4 and self._all_lists:
            record = {
                "$type": "app.bsky.graph.listblock",
                "subject": rng.choice(self._all_lists),
                "createdAt": self._time,
            }
            op = self._create(actor, "app.bsky.graph.listblock", record)
        elif choice < 0.5:
            self._counter += 1
            record = {
                "$type": "app.bsky.feed.generator",
                "did": "did:web:feeds.example.com",
                "displayName": rng.choice(("Cats", "Science", "Quiet posters", "日本語フィード")),
                "description": "Posts picked by the simulator",
                "createdAt": self._time,
            }
            op = self._create(actor, "app.bsky.feed.generator", record, f"feed-{self._counter}")
        elif choice < 0.7 and actor in self._last_post:
            rkey, uri = self._last_post.pop(actor)
            op = self._gate(actor, rng.choice(("app.bsky.feed.threadgate", "app.bsky.feed.postgate")), rkey, uri)
        elif choice < 0.8 and own_lists:
            record = {
                "$type": "app.bsky.graph.starterpack",
                "name": "Start here ✨",
                "list": rng.choice(own_lists),
                "feeds": [],
                "createdAt": self._time,
            }
            op = self._create(actor, "app.bsky.graph.starterpack", record)
        else:
            op = self._new_list(actor)[0]
        return self._commit(seq, actor, [op])

    def _other(self, seq: int) -> bytes:
        rng = self._rng
        actor = self._pick_actor()
        if rng.random() < 0.15:
            collection = "chat.bsky.actor.declaration"
            action = "update" if (actor, collection) in self._singletons else "create"
            self._singletons.add((actor, collection))
            record = {"$type": collection, "allowIncoming": rng.choice(("all", "following", "none"))}
            return self._commit(seq, actor, [self._record_op(action, collection, "self", record)])
        collection = rng.choice(_OTHER_COLLECTIONS)
        record = {"$type": collection, "createdAt": self._time}
        if collection == "xyz.statusphere.status":
            record["status"] = rng.choice(_EMOJI)
        elif collection == "com.whtwnd.blog.entry":
            record.update(title="Notes from the week", content="# Hello\n\nLong form text, ünïcode and all.")
        elif collection == "fyi.unravel.frontpage.post":
            record.update(title="An interesting link", url=rng.choice(_LINKS))
        else:
            record["text"] = "A record of a collection no AppView knows about."
        return self._commit(seq, actor, [self._create(actor, collection, record)])

    def _multi(self, seq: int) -> bytes:
        rng = self._rng
        actor = self._pick_actor()
        choice = rng.random()
        ops: list[tuple[Any, ...]]
        if choice < 0.35:
            rkey = self._rkey()
            ops = [self._post_op(actor, rkey)]
            uri = f"at://{self._dids[actor]}/app.bsky.feed.post/{rkey}"
            ops += [self._gate(actor, "app.bsky.feed.threadgate", rkey, uri)]
            ops += [self._gate(actor, "app.bsky.feed.postgate", rkey, uri)]
            self._last_post.pop(actor, None)
        elif choice < 0.7:
            # "Follow all" from a starter pack: several follows in one commit.
            ops = []
            for offset, subject in enumerate(self._distinct_subjects(actor, rng.randint(3, 8))):
                record = {"$type": "app.bsky.graph.follow", "subject": subject, "createdAt": self._time}
                ops.append(self._create(actor, "app.bsky.graph.follow", record, self._rkey(offset)))
        else:
            list_op, list_uri = self._new_list(actor, "app.bsky.graph.defs#referencelist")
            subjects = self._distinct_subjects(actor, rng.randint(2, 5))
            ops = [list_op]
            ops += [self._list_item(actor, list_uri, offset, subject) for offset, subject in enumerate(subjects, 1)]
            if choice >= 0.85:
                record = {
                    "$type": "app.bsky.graph.starterpack",
                    "name": "Mes comptes préférés",
                    "list": list_uri,
                    "createdAt": self._time,
                }
                ops.append(self._create(actor, "app.bsky.graph.starterpack", record, self._rkey(len(ops))))
        return self._commit(seq, actor, ops)

    def _identity(self, seq: int) -> bytes:
        actor = self._pick_actor()
        handle = self._new_handle()
        previous, self._handles[actor] = self._handles[actor], handle
        self._handle_changed(actor, previous)
        return encode_frame(_IDENTITY, {"seq": seq, "did": self._dids[actor], "time": self._time, "handle": handle})

    def _account(self, seq: int) -> bytes:
        choice = self._rng.random()
        if choice < 0.65:
            actor = self._inactive.pop() if self._inactive else self._pick_actor()
            self._active[actor] = True
            self._status_changed(actor, None)
            return encode_frame(_ACCOUNT, {"seq": seq, "did": self._dids[actor], "time": self._time, "active": True})
        status = next(name for limit, name in _ACCOUNT_STATUSES if choice < limit)
        actor = self._pick_actor()
        did = self._dids[actor]
        if status == "deleted":
            # The account is gone for good: its slot goes to a new account.
            self._account_deleted(actor)
            del self._actor_of[did]
            self._lists.pop(actor, None)
            self._last_post.pop(actor, None)
            self._singletons.discard((actor, "chat.bsky.actor.declaration"))
            self._add_actor(actor)
        else:
            self._active[actor] = False
            self._inactive.append(actor)
            self._status_changed(actor, status)
        return encode_frame(_ACCOUNT, {"seq": seq, "did": did, "time": self._time, "active": False, "status": status})

    # Where a subclass keeping real accounts follows the changes of the stream (SignedFirehose).

    def _handle_changed(self, actor: int, previous: str) -> None:
        """``previous``: the handle the new one replaced."""

    def _status_changed(self, actor: int, status: str | None) -> None:
        """``status`` None: active again."""

    def _account_deleted(self, actor: int) -> None:
        """Called before the actor's slot goes to a new account."""

    def _sync(self, seq: int) -> bytes:
        rng = self._rng
        actor = self._pick_actor()
        did = self._dids[actor]
        rev = tid(self._us, actor)
        data = DAG_CBOR_CID_PREFIX + rng.randbytes(32)
        commit_block = libipld.encode_dag_cbor(
            {"did": did, "version": 3, "data": data, "rev": rev, "prev": None, "sig": rng.randbytes(64)}
        )
        self._revs[actor] = rev
        self._data[actor] = data
        commit_cid = cid_for_block(commit_block)
        blocks = car_of_cids([commit_cid], [(commit_cid, commit_block)])
        return encode_frame(SYNC_HEADER, {"seq": seq, "did": did, "blocks": blocks, "rev": rev, "time": self._time})


# -- recordings and replays ---------------------------------------------------------------------------

_LENGTH = struct.Struct("<I")


def write_recording(path: Path, frames: Iterable[bytes]) -> int:
    """Writes frames in the recording format; returns how many."""
    count = 0
    with open(path, "wb") as out:
        for frame in frames:
            out.write(_LENGTH.pack(len(frame)))
            out.write(frame)
            count += 1
    return count


def read_recording(path: Path) -> list[bytes]:
    data = Path(path).read_bytes()
    frames = []
    offset = 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise ValueError(f"{path}: truncated length prefix at byte {offset}")
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += 4
        if offset + length > len(data):
            raise ValueError(f"{path}: frame at byte {offset - 4} is cut short")
        frames.append(data[offset : offset + length])
        offset += length
    return frames


@dataclass(frozen=True, slots=True)
class ReplayFrame:
    seq: int | None  # None when the frame carries no usable seq (replayed bad frames)
    frame: bytes


def load_replay(path: Path, *, include_dropped: bool = False) -> list[ReplayFrame]:
    path = Path(path)
    if path.suffix == ".json":
        return [
            ReplayFrame(message.seq if isinstance(message.seq, int) else None, message.frame)
            for message in load_scenario(path)
            if include_dropped or not message.dropped
        ]
    return [ReplayFrame(_seq_of(frame), frame) for frame in read_recording(path)]


def _seq_of(frame: bytes) -> int | None:
    try:
        seq = decode_frame(frame).body.get("seq")
    except FrameError:
        return None
    return seq if type(seq) is int else None


def renumbered(frame: bytes, seq: int) -> bytes:
    """The same event with another seq, as a second relay numbers it; a frame that is not an event (bad frames
    of the fault injection, errors) stays as it is."""
    try:
        parts = libipld.decode_dag_cbor_multi(frame)
    except (ValueError, RecursionError, OverflowError):
        return frame
    if len(parts) != 2 or not isinstance(parts[1], dict) or type(parts[1].get("seq")) is not int:
        return frame
    header, body = parts
    body["seq"] = seq
    return encode_frame(header, body)


# -- bad frames for fault injection -------------------------------------------------------------------

MALFORMED_KINDS = ("truncated", "garbage", "bad-header", "seq-not-int", "ops-not-list", "oversize")


def malformed_frame(kind: str, *, seq: int, frame: bytes, rng: random.Random) -> bytes:
    """A frame a consumer must reject: ``frame`` is the real frame it stands next to, ``seq`` its seq."""
    if kind == "truncated":
        return frame[: max(1, len(frame) // 2)]
    if kind == "garbage":
        # 0xff is a CBOR "break" outside any indefinite-length item: never valid at the start.
        return b"\xff" + rng.randbytes(rng.randint(16, 512))
    if kind == "bad-header":
        return libipld.encode_dag_cbor({"op": "1", "t": 7}) + libipld.encode_dag_cbor({"seq": seq})
    body: dict[str, Any] = {
        "seq": seq,
        "rebase": False,
        "tooBig": False,
        "repo": "did:plc:malformedmalformedmalfo",
        "commit": cid_for_block(b"malformed"),
        "rev": "2222222222222",
        "since": None,
        "blocks": b"",
        "ops": [],
        "blobs": [],
        "time": "2025-01-01T00:00:00.000Z",
    }
    if kind == "seq-not-int":
        body["seq"] = str(seq)
    elif kind == "ops-not-list":
        body["ops"] = {"action": "create", "path": "app.bsky.feed.like/2222222222222"}
    elif kind == "oversize":
        body["blocks"] = bytes(MAX_FRAME_BYTES + 1024)
    else:
        raise ValueError(f"unknown malformed frame kind {kind!r}")
    return encode_frame(_COMMIT, body)
