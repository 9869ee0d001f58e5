"""Benchmark of the read API (``GET /xrpc/<NSID>`` served by daphne) on a database of realistic size.

    .venv/bin/python bench/api_bench.py [--posts 1000000] [--actors 100000] [--duration 20] [--keep-db NAME]
                                        [--servers 1,2] [--also-pg-options OPTIONS] [--rate 50]
                                        [--concurrency 8] [--seed 1] [--write docs/benchmarks.md]

1. Database: a migrated database of its own (``harness.servers.scratch_database``, dropped at exit), or with
   ``--keep-db NAME`` one that stays (built when missing, reused as it is when an earlier run built it). The
   rows are generated in Python and written with COPY straight into appview_actor, appview_profile,
   appview_post, appview_like, appview_follow and appview_repost, bypassing the worker: skewed activity (a
   few actors post a lot, are followed and liked a lot; most barely), reply threads (a few with hundreds of
   replies), quotes, images, links and videos with blob refs, hidden (deactivated, taken down) accounts,
   and the aggregate columns counted from the generated rows. Indexes and primary keys are dropped before
   the COPY and rebuilt after it (two at a time, one per core), COPY FREEZE leaves the pages all-visible,
   then ANALYZE. The schema afterwards is checked to be the migrated one.
2. Servers: daphne (``config.asgi:application``) against that database; one process, then with
   ``--servers 1,2`` two processes on two ports with the client connections split between them; with
   ``--also-pg-options '-c max_parallel_workers_per_gather=0'`` one more round of one process whose database
   connections get those settings (appended to DATABASE_URL's ``options``, which config.settings extends).
3. Load, for getProfile, getAuthorFeed (limit 50, busy authors), getPostThread (roots of threads with
   replies) and getPosts (25 random URIs), with random targets read from the database: an open loop at
   ``--rate`` requests/s for ``--duration`` s over ``--concurrency`` keep-alive connections (latency counted
   from the moment a request was due, so a server that falls behind shows it), then a closed loop of
   ``--concurrency`` clients as fast as the server answers. The client is a small HTTP/1.1 client on asyncio
   streams (uvloop): httpx costs several times its CPU per request, which daphne and PostgreSQL would lack on
   2 cores. CPU per request of daphne, of the database's PostgreSQL backends and of the parallel query
   workers they lead (short-lived: a tracker process reads them every millisecond), of the Redis server (the
   rate limiter's two commands per request) and of this script, from /proc; and the share of the machine's
   CPU that other processes took meanwhile (the machine may be shared).
4. Plans: ``EXPLAIN (ANALYZE, BUFFERS)`` (median of EXPLAIN_RUNS runs) of each endpoint's main query (the SQL
   that the selector or hydration function sends, captured with Django's ``execute_wrapper``), and one line
   for every query the whole endpoint sends, with any sequential scan of a big table flagged, slow ones in
   full, and parallel plans run again without workers.
5. A Markdown summary; ``--write FILE`` replaces (or appends) the "Read API" section of that file.

Not a test: nothing asserts. daphne is stopped at exit (Ctrl-C and SIGTERM included), the Redis keys of the
run are removed, and the database is dropped unless ``--keep-db``.
"""

import argparse
import asyncio
import base64
import bisect
import http.client
import importlib
import math
import os
import platform
import random
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from itertools import accumulate, cycle
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import orjson
import psutil
import psycopg

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

from bench.markdown import write_section  # noqa: E402
from bench.worker_bench import PostgresProcesses, cpu_seconds  # noqa: E402
from harness.servers import (  # noqa: E402
    connect,
    database_name,
    free_port,
    run_migrate,
    scratch_database,
    shared_admin_url,
    with_database,
)
from relaysim.simulation import _BIOS, _DISPLAY_NAMES, _LINKS, _NAMES, PostTemplate, post_template, tid  # noqa: E402

PROFILE, AUTHOR_FEED, THREAD, POSTS = (
    "app.bsky.actor.getProfile", "app.bsky.feed.getAuthorFeed", "app.bsky.feed.getPostThread",
    "app.bsky.feed.getPosts",
)
ENDPOINTS = (PROFILE, AUTHOR_FEED, THREAD, POSTS)
TARGET_P99_MS = 50.0
HIDDEN_STATUSES = ("deactivated", "takendown", "suspended", "deleted")
TABLES = ("appview_actor", "appview_profile", "appview_post", "appview_like", "appview_follow", "appview_repost",
          "appview_hiddenshare")
BUILT = "api_bench built"  # the comment on a database this script built completely
BUILDING = "api_bench building"

# The shape of the data, per post or per actor.
REPLY_SHARE = 0.3  # of posts
LIKES_PER_POST = 2.0
REPOSTS_PER_POST = 0.25
FOLLOWS_PER_ACTOR = 12
HIDDEN_SHARE = 0.006  # deactivated or taken down accounts
PROFILE_SHARE = 0.92  # actors with a profile record
HISTORY_DAYS = 180  # posts span this; follows and profiles go back further
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
# Targets: busy authors are the ones with the most posts; threads have at least this many replies below the root.
BUSY_AUTHORS = 200
THREAD_MIN_REPLIES = 2
POSTS_PER_CALL = 25
WARMUP_SECONDS = 2.0
SAMPLE_SECONDS = 0.2
SLOW_QUERY_MS = 2.0  # plans of queries this slow are printed in full
EXPLAIN_RUNS = 3  # each EXPLAIN ANALYZE runs this many times; the median run is shown


def visible(alias: str) -> str:
    """The condition on actor rows ``alias``: the account is shown (active, and in no hidden status)."""
    return f"{alias}.active AND {alias}.status NOT IN {HIDDEN_STATUSES!r}"


# -- Generated values --------------------------------------------------------------------------------

_B32 = "abcdefghijklmnopqrstuvwxyz234567"  # RFC 4648 base32, lower case: CIDs and did:plc identifiers
# A CIDv1 with a sha-256 digest is 'b' + 58 base32 characters; the 7th holds the last 2 bits of the prefix
# (zero) and 3 of the digest, the last 3 bits of the digest and 2 zero bits of padding.
_SEVENTH = {c: _B32[i % 8] for i, c in enumerate(_B32)}
_LAST = {c: _B32[(i % 8) * 4] for i, c in enumerate(_B32)}
CBOR_CID = "bafyrei"  # dag-cbor records
RAW_CID = "bafkrei"  # raw blobs (images, videos)


class Base32:
    """Random base32 characters, encoded in bulk (one b32encode per 160,000 characters)."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._pool = ""
        self._at = 0

    def take(self, n: int) -> str:
        if self._at + n > len(self._pool):
            self._pool = base64.b32encode(self._rng.randbytes(100_000)).decode().lower()
            self._at = 0
        self._at += n
        return self._pool[self._at - n:self._at]

    def cid(self, prefix: str = CBOR_CID) -> str:
        s = self.take(52)
        return prefix + _SEVENTH[s[0]] + s[1:51] + _LAST[s[51]]


def iso(ms: int) -> str:
    """An atproto datetime (UTC, milliseconds) of a time in milliseconds since the epoch."""
    seconds, millis = divmod(ms, 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{millis:03d}Z"


def esc(value: str) -> str:
    """A value in COPY's text format."""
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return value


def cumulative(weights: Any) -> list[float]:
    return list(accumulate(weights))


@dataclass
class Data:
    """Every generated row as numbers (actor and post indexes, times in ms); text is made when writing."""

    now_ms: int
    origin_ms: int  # interactions store their time relative to this
    dids: list[str]
    handles: list[str]
    status: list[str]
    post_author: list[int]
    post_ms: list[int]
    post_root: list[int]  # -1: not a reply
    post_parent: list[int]
    post_quote: list[int]  # -1: quotes nothing
    post_embed: bytearray  # EMBED_* codes
    post_rkey: list[str] = field(default_factory=list)
    post_uri: list[str] = field(default_factory=list)
    post_cid: list[str] = field(default_factory=list)
    likes: list[int] = field(default_factory=list)  # packed (time, actor, post), sorted by time
    reposts: list[int] = field(default_factory=list)
    follows: list[int] = field(default_factory=list)  # packed (time, follower, subject)
    like_count: list[int] = field(default_factory=list)
    repost_count: list[int] = field(default_factory=list)
    reply_count: list[int] = field(default_factory=list)
    quote_count: list[int] = field(default_factory=list)
    followers: list[int] = field(default_factory=list)
    following: list[int] = field(default_factory=list)
    posts_count: list[int] = field(default_factory=list)
    actor_bits: int = 0
    post_bits: int = 0


EMBED_NONE, EMBED_IMAGES, EMBED_EXTERNAL, EMBED_RECORD, EMBED_RECORD_MEDIA, EMBED_VIDEO = range(6)
EMBED_TYPES = {EMBED_IMAGES: "app.bsky.embed.images", EMBED_EXTERNAL: "app.bsky.embed.external",
               EMBED_RECORD: "app.bsky.embed.record", EMBED_RECORD_MEDIA: "app.bsky.embed.recordWithMedia",
               EMBED_VIDEO: "app.bsky.embed.video"}


def generate(actors: int, posts: int, seed: int) -> Data:
    """The rows as numbers. Actor index = rank: actor 0 posts the most and is the most followed; who likes,
    reposts and follows is skewed independently (a shuffled rank)."""
    rng = random.Random(seed)
    chars = Base32(rng)
    now_ms = int(time.time()) * 1000 - 60_000
    dids = ["did:plc:" + chars.take(24) for _ in range(actors)]
    handles = []
    for index in range(actors):
        name = _NAMES[index % len(_NAMES)]
        handles.append(f"{name}{index}.example.dev" if rng.random() < 0.05 else f"{name}{index}.bsky.social")
    status = ["active"] * actors
    for index in rng.sample(range(actors), int(actors * HIDDEN_SHARE)):
        status[index] = "deactivated" if rng.random() < 0.7 else "takendown"

    posting = cumulative(1 / (a + 10) for a in range(actors))
    fame = [1 / (a + 3) ** 1.1 for a in range(actors)]
    ranked = list(range(actors))
    rng.shuffle(ranked)  # activity rank -> actor, for likes, reposts and follows
    activity = cumulative(1 / (k + 20) ** 0.7 for k in range(actors))

    # Posts: top-level ones over the history (more of them lately), then replies in threads below them.
    replies = int(posts * REPLY_SHARE)
    top = posts - replies
    author = rng.choices(range(actors), cum_weights=posting, k=posts)
    span = HISTORY_DAYS * DAY_MS - HOUR_MS
    start_ms = now_ms - HISTORY_DAYS * DAY_MS
    post_ms = [start_ms + int(span * rng.random() ** 0.7) for _ in range(top)] + [0] * replies
    pareto = rng.paretovariate
    popularity = [fame[author[i]] * min(pareto(1.3), 300.0) for i in range(top)]
    top_cumulative = cumulative(popularity)
    root = [-1] * posts
    parent = [-1] * posts
    threads: dict[int, list[int]] = {}
    for offset, thread_root in enumerate(rng.choices(range(top), cum_weights=top_cumulative, k=replies)):
        threads.setdefault(thread_root, []).append(top + offset)
    expovariate = rng.expovariate
    latest = now_ms - 1000
    for thread_root, members in threads.items():
        base = post_ms[thread_root]
        delays = sorted(expovariate(1 / (3 * HOUR_MS)) for _ in members)
        for k, (i, delay) in enumerate(zip(members, delays, strict=True)):
            post_ms[i] = min(base + 1 + int(delay), latest)
            u = rng.random()
            # Half answer the root; the rest a reply: often the one just before (a conversation).
            above = thread_root if k == 0 or u < 0.5 else members[k - 1] if u < 0.8 else members[int(rng.random() * k)]
            root[i] = thread_root
            parent[i] = above
            if rng.random() < 0.15:
                author[i] = author[thread_root]  # the author answering in their own thread
    popularity += [fame[author[i]] * min(pareto(1.3), 300.0) * 0.2 for i in range(top, posts)]

    embed = bytearray(posts)
    quote = [-1] * posts
    total = top_cumulative[-1]
    for i in range(posts):
        u = rng.random()
        if u < 0.15:
            embed[i] = EMBED_IMAGES
        elif u < 0.20:
            embed[i] = EMBED_EXTERNAL
        elif u < 0.25:
            for _ in range(4):  # a quote of an earlier, preferably popular, top-level post
                quoted = min(bisect.bisect(top_cumulative, rng.random() * total), top - 1)
                if post_ms[quoted] < post_ms[i]:
                    quote[i] = quoted
                    embed[i] = EMBED_RECORD if u < 0.24 else EMBED_RECORD_MEDIA
                    break
        elif u < 0.26:
            embed[i] = EMBED_VIDEO

    data = Data(now_ms=now_ms, origin_ms=now_ms - 2 * 365 * DAY_MS, dids=dids, handles=handles, status=status,
                post_author=author, post_ms=post_ms, post_root=root, post_parent=parent, post_quote=quote,
                post_embed=embed, actor_bits=max(actors - 1, 1).bit_length(),
                post_bits=max(posts - 1, 1).bit_length())
    data.reply_count = [0] * posts
    for i in range(top, posts):
        data.reply_count[parent[i]] += 1
    data.quote_count = [0] * posts
    for quoted in quote:
        if quoted >= 0:
            data.quote_count[quoted] += 1
    data.posts_count = [0] * actors
    for a in author:
        data.posts_count[a] += 1
    # Record keys: TIDs of the creation time; the microseconds and the clock id hold the index, so that keys
    # are distinct even for records of the same millisecond.
    data.post_rkey = [tid(post_ms[i] * 1000 + i % 1000, (i // 1000) & 1023) for i in range(posts)]
    data.post_uri = [f"at://{dids[author[i]]}/app.bsky.feed.post/{data.post_rkey[i]}" for i in range(posts)]
    data.post_cid = [chars.cid() for _ in range(posts)]

    post_cumulative = cumulative(popularity)
    data.likes, data.like_count = _interactions(rng, data, int(posts * LIKES_PER_POST), ranked, activity,
                                                post_cumulative, mean_delay_ms=8 * HOUR_MS)
    data.reposts, data.repost_count = _interactions(rng, data, int(posts * REPOSTS_PER_POST), ranked, activity,
                                                    post_cumulative, mean_delay_ms=4 * HOUR_MS)
    data.follows, data.followers, data.following = _follows(rng, data, actors * FOLLOWS_PER_ACTOR, ranked,
                                                            activity, cumulative(fame))
    return data


def _interactions(rng: random.Random, data: Data, count: int, ranked: list[int], activity: list[float],
                  post_cumulative: list[float], *, mean_delay_ms: float) -> tuple[list[int], list[int]]:
    """Likes or reposts: packed (time - origin, actor, post), sorted by time, one per actor and post at most;
    and the count per post."""
    posts = len(data.post_ms)
    counts = [0] * posts
    seen: set[int] = set()
    packed = []
    shift = data.actor_bits + data.post_bits
    post_ms, origin, latest = data.post_ms, data.origin_ms, data.now_ms - 1000
    expovariate = rng.expovariate
    who = rng.choices(ranked, cum_weights=activity, k=count)
    what = rng.choices(range(posts), cum_weights=post_cumulative, k=count)
    for actor, post in zip(who, what, strict=True):
        pair = actor << data.post_bits | post
        if pair in seen:
            continue
        seen.add(pair)
        when = min(post_ms[post] + 1000 + int(expovariate(1 / mean_delay_ms)), latest)
        packed.append((when - origin) << shift | pair)
        counts[post] += 1
    packed.sort()
    return packed, counts


def _follows(rng: random.Random, data: Data, count: int, ranked: list[int], activity: list[float],
             fame_cumulative: list[float]) -> tuple[list[int], list[int], list[int]]:
    actors = len(data.dids)
    followers, following = [0] * actors, [0] * actors
    seen: set[int] = set()
    packed = []
    shift = data.actor_bits * 2
    span = data.now_ms - 1000 - data.origin_ms
    who = rng.choices(ranked, cum_weights=activity, k=count)
    whom = rng.choices(range(actors), cum_weights=fame_cumulative, k=count)
    for follower, subject in zip(who, whom, strict=True):
        pair = follower << data.actor_bits | subject
        if follower == subject or pair in seen:
            continue
        seen.add(pair)
        packed.append(int(span * rng.random()) << shift | pair)
        followers[subject] += 1
        following[follower] += 1
    packed.sort()
    return packed, followers, following


# -- Rows in COPY's text format -------------------------------------------------------------------------

RECORD_COLUMNS = ("uri", "did", "rkey", "cid", "rev", "seq", "created_at", "indexed_at", "raw")
COLUMNS = {
    "appview_actor": ("did", "handle", "active", "status", "status_position", "rev", "floor_rev", "missing_revs",
                      "sync_status", "sync_reason", "sync_tries", "display_name", "description", "followers_count",
                      "follows_count", "posts_count"),
    "appview_profile": (*RECORD_COLUMNS, "display_name", "description", "avatar_cid", "banner_cid",
                        "pinned_post_uri"),
    "appview_post": (*RECORD_COLUMNS, "text", "langs", "reply_root_uri", "reply_parent_uri", "quote_uri",
                     "embed_type", "like_count", "repost_count", "reply_count", "quote_count"),
    "appview_like": (*RECORD_COLUMNS, "subject_uri", "subject_cid"),
    "appview_follow": (*RECORD_COLUMNS, "subject_did"),
    "appview_repost": (*RECORD_COLUMNS, "subject_uri", "subject_cid"),
}
NULL = "\\N"


def templates(rng: random.Random, data: Data, count: int = 3000) -> list[PostTemplate]:
    """Post texts as relaysim's synthetic firehose writes them."""
    return [post_template(rng, data.dids, data.handles) for _ in range(count)]


class Rows:
    """The text-format COPY lines of each table, made from ``Data``."""

    def __init__(self, data: Data, seed: int) -> None:
        self.data = data
        self.rng = random.Random(seed + 1)
        self.chars = Base32(self.rng)
        self.templates = templates(self.rng, data)
        self.pinned: dict[int, int] = {}  # actor -> a post of theirs pinned on the profile
        self.profile_of: dict[int, tuple[str, str]] = {}  # actor -> (display name, description)

    def _blob(self, mime: str, low: int, high: int) -> dict[str, Any]:
        return {"$type": "blob", "ref": {"$link": self.chars.cid(RAW_CID)}, "mimeType": mime,
                "size": self.rng.randint(low, high)}

    def _images(self) -> dict[str, Any]:
        rng = self.rng
        images = []
        for _ in range(1 + int(rng.random() ** 3 * 4)):
            width, height = rng.choice(((1200, 800), (800, 1200), (1000, 1000), (1920, 1080)))
            alt = rng.choice(("", "A cat asleep on a keyboard", "夕焼けの写真", "Un gráfico de barras"))
            images.append({"alt": alt, "image": self._blob("image/jpeg", 20_000, 900_000),
                           "aspectRatio": {"width": width, "height": height}})
        return {"$type": "app.bsky.embed.images", "images": images}

    def _embed(self, code: int, quoted: int) -> dict[str, Any]:
        d = self.data
        if code == EMBED_IMAGES:
            return self._images()
        if code == EMBED_EXTERNAL:
            external: dict[str, Any] = {"uri": self.rng.choice(_LINKS), "title": "A page worth reading",
                                        "description": "Préface, 第一章 and more."}
            if self.rng.random() < 0.5:
                external["thumb"] = self._blob("image/jpeg", 10_000, 300_000)
            return {"$type": "app.bsky.embed.external", "external": external}
        if code == EMBED_VIDEO:
            return {"$type": "app.bsky.embed.video", "video": self._blob("video/mp4", 500_000, 50_000_000),
                    "aspectRatio": {"width": 1080, "height": 1920}}
        ref = {"uri": d.post_uri[quoted], "cid": d.post_cid[quoted]}
        if code == EMBED_RECORD:
            return {"$type": "app.bsky.embed.record", "record": ref}
        return {"$type": "app.bsky.embed.recordWithMedia", "record": {"$type": "app.bsky.embed.record", "record": ref},
                "media": self._images()}

    def posts(self) -> Iterator[str]:
        d, rng = self.data, self.rng
        dids, uris, cids, rkeys = d.dids, d.post_uri, d.post_cid, d.post_rkey
        templates_, count = self.templates, len(self.templates)
        dumps = orjson.dumps
        for i in sorted(range(len(d.post_ms)), key=d.post_ms.__getitem__):  # in time order, as indexed
            when = d.post_ms[i]
            created = iso(when)
            template = templates_[int(rng.random() * count)]
            record: dict[str, Any] = {"$type": "app.bsky.feed.post", "text": template.text, "createdAt": created}
            if template.langs:
                record["langs"] = template.langs
            if template.facets:
                record["facets"] = template.facets
            root = d.post_root[i]
            root_uri = parent_uri = quote_uri = NULL
            if root >= 0:
                parent = d.post_parent[i]
                root_uri, parent_uri = uris[root], uris[parent]
                record["reply"] = {"root": {"uri": root_uri, "cid": cids[root]},
                                   "parent": {"uri": parent_uri, "cid": cids[parent]}}
            code = d.post_embed[i]
            embed_type = NULL
            if code:
                record["embed"] = self._embed(code, d.post_quote[i])
                embed_type = EMBED_TYPES[code]
                if d.post_quote[i] >= 0:
                    quote_uri = uris[d.post_quote[i]]
            author = d.post_author[i]
            if author not in self.pinned and root < 0 and rng.random() < 0.05:
                self.pinned[author] = i
            yield "\t".join((
                uris[i], dids[author], rkeys[i], cids[i], tid(when * 1000 + 1000, author & 1023),
                str(when - d.origin_ms), created, iso(when + rng.randint(200, 4000)), esc(dumps(record).decode()),
                esc(template.text), dumps(template.langs or []).decode(), root_uri, parent_uri, quote_uri, embed_type,
                str(d.like_count[i]), str(d.repost_count[i]), str(d.reply_count[i]), str(d.quote_count[i]),
            )) + "\n"

    def subjects(self, packed: list[int], collection: str) -> Iterator[str]:
        """Likes or reposts."""
        d, rng = self.data, self.rng
        post_bits, actor_mask, post_mask = d.post_bits, (1 << d.actor_bits) - 1, (1 << d.post_bits) - 1
        shift = d.actor_bits + d.post_bits
        dids, uris, cids, origin = d.dids, d.post_uri, d.post_cid, d.origin_ms
        cid = self.chars.cid
        for n, key in enumerate(packed):
            relative = key >> shift
            when = relative + origin
            actor, post = (key >> post_bits) & actor_mask, key & post_mask
            did = dids[actor]
            rkey = tid(when * 1000 + n % 1000, (n // 1000) & 1023)
            created = iso(when)
            subject_uri, subject_cid = uris[post], cids[post]
            raw = (f'{{"$type":"{collection}","subject":{{"uri":"{subject_uri}","cid":"{subject_cid}"}},'
                   f'"createdAt":"{created}"}}')
            yield "\t".join((
                f"at://{did}/{collection}/{rkey}", did, rkey, cid(), tid(when * 1000 + 1000, actor & 1023),
                str(relative), created, iso(when + rng.randint(200, 4000)), raw, subject_uri, subject_cid,
            )) + "\n"

    def follows(self) -> Iterator[str]:
        d, rng = self.data, self.rng
        bits = d.actor_bits
        mask = (1 << bits) - 1
        dids, origin = d.dids, d.origin_ms
        cid = self.chars.cid
        collection = "app.bsky.graph.follow"
        for n, key in enumerate(d.follows):
            relative = key >> (2 * bits)
            when = relative + origin
            follower, subject = (key >> bits) & mask, key & mask
            did, subject_did = dids[follower], dids[subject]
            rkey = tid(when * 1000 + n % 1000, (n // 1000) & 1023)
            created = iso(when)
            raw = f'{{"$type":"{collection}","subject":"{subject_did}","createdAt":"{created}"}}'
            yield "\t".join((
                f"at://{did}/{collection}/{rkey}", did, rkey, cid(), tid(when * 1000 + 1000, follower & 1023),
                str(relative), created, iso(when + rng.randint(200, 4000)), raw, subject_did,
            )) + "\n"

    def profiles(self) -> Iterator[str]:
        """Profile records (after posts(), which chooses the pinned posts)."""
        d, rng = self.data, self.rng
        for actor, did in enumerate(d.dids):
            if rng.random() >= PROFILE_SHARE:
                continue
            when = d.origin_ms + int((d.now_ms - d.origin_ms) * rng.random() ** 3)
            created = iso(when)
            name, bio = rng.choice(_DISPLAY_NAMES), rng.choice(_BIOS)
            record: dict[str, Any] = {"$type": "app.bsky.actor.profile", "displayName": name, "description": bio}
            avatar = banner = pinned_uri = NULL
            if rng.random() < 0.85:
                record["avatar"] = self._blob("image/jpeg", 10_000, 1_000_000)
                avatar = record["avatar"]["ref"]["$link"]
            if rng.random() < 0.4:
                record["banner"] = self._blob("image/jpeg", 50_000, 1_000_000)
                banner = record["banner"]["ref"]["$link"]
            pinned = self.pinned.get(actor)
            if pinned is not None:
                pinned_uri = d.post_uri[pinned]
                record["pinnedPost"] = {"uri": pinned_uri, "cid": d.post_cid[pinned]}
            record["createdAt"] = created
            self.profile_of[actor] = (name, bio)
            yield "\t".join((
                f"at://{did}/app.bsky.actor.profile/self", did, "self", self.chars.cid(),
                tid(when * 1000 + 1000, actor & 1023), str(when - d.origin_ms), created, iso(when + 1000),
                esc(orjson.dumps(record).decode()), esc(name), esc(bio), avatar, banner, pinned_uri,
            )) + "\n"

    def actors(self) -> Iterator[str]:
        """Actor rows (after profiles(), whose names and descriptions they repeat)."""
        d, rng = self.data, self.rng
        now_us = d.now_ms * 1000
        for actor, did in enumerate(d.dids):
            status = d.status[actor]
            name, bio = self.profile_of.get(actor, (None, None))
            seq = d.now_ms - d.origin_ms - rng.randrange(DAY_MS)
            yield "\t".join((
                did, d.handles[actor], "t" if status == "active" else "f", status, f"{seq * 1000:017d}.{seq:020d}",
                tid(now_us - rng.randrange(DAY_MS * 1000), actor & 1023), "", "{}", "active", "", "0",
                NULL if name is None else esc(name), NULL if bio is None else esc(bio),
                str(d.followers[actor]), str(d.following[actor]), str(d.posts_count[actor]),
            )) + "\n"


# -- Building the database -----------------------------------------------------------------------------

def conninfo(url: str) -> str:
    return url.replace("postgres://", "postgresql://", 1)


def copy_rows(conn: psycopg.Connection, table: str, rows: Iterator[str]) -> tuple[int, float]:
    """COPY FREEZE into a table emptied in the same transaction (its pages are written all-visible and frozen,
    so no VACUUM is needed for index-only scans); returns (rows, seconds)."""
    started = time.perf_counter()
    count = 0
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(f"TRUNCATE {table}")
        with cur.copy(f"COPY {table} ({', '.join(COLUMNS[table])}) FROM STDIN (FREEZE)") as copy:
            chunk: list[str] = []
            for line in rows:
                chunk.append(line)
                if len(chunk) == 2000:
                    copy.write("".join(chunk))
                    count += len(chunk)
                    chunk.clear()
            copy.write("".join(chunk))
            count += len(chunk)
    return count, time.perf_counter() - started


def schema_of(conn: psycopg.Connection) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Index name -> definition, and (table, constraint) of the primary keys, of the loaded tables."""
    indexes = dict(conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
                                " AND tablename = ANY(%s)", [list(TABLES)]).fetchall())
    keys = conn.execute("SELECT conrelid::regclass::text, conname FROM pg_constraint WHERE contype = 'p'"
                        " AND conrelid::regclass::text = ANY(%s)", [list(TABLES)]).fetchall()
    return indexes, keys


def build_indexes(url: str, definitions: list[str]) -> None:
    """Runs the CREATE INDEX statements on two connections (one per core), the slowest first."""
    queue = list(definitions)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with psycopg.connect(conninfo(url), autocommit=True) as conn:
                conn.execute("SET maintenance_work_mem = '1GB'")
                conn.execute("SET max_parallel_maintenance_workers = 0")
                while True:
                    with lock:
                        if not queue or errors:
                            return
                        statement = queue.pop(0)
                    conn.execute(statement)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def build(url: str, actors: int, posts: int, seed: int) -> None:
    """Fills a migrated database; prints what each step took."""
    started = time.perf_counter()
    data = generate(actors, posts, seed)
    generated = time.perf_counter() - started
    print(f"generated {posts:,} posts, {len(data.likes):,} likes, {len(data.reposts):,} reposts,"
          f" {len(data.follows):,} follows of {actors:,} actors in {generated:.1f} s", flush=True)
    rows = Rows(data, seed)
    sizes = {"appview_like": len(data.likes), "appview_follow": len(data.follows), "appview_post": posts,
             "appview_repost": len(data.reposts), "appview_profile": actors, "appview_actor": actors}
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        indexes, keys = schema_of(conn)
        for table, constraint in keys:
            conn.execute(f"ALTER TABLE {table} DROP CONSTRAINT {constraint}")
        for name in indexes:
            conn.execute(f"DROP INDEX IF EXISTS {name}")
        copied = time.perf_counter()
        for table, lines in (("appview_post", rows.posts()), ("appview_like", rows.subjects(data.likes,
                             "app.bsky.feed.like")), ("appview_repost", rows.subjects(data.reposts,
                             "app.bsky.feed.repost")), ("appview_follow", rows.follows()),
                             ("appview_profile", rows.profiles()), ("appview_actor", rows.actors())):
            count, seconds = copy_rows(conn, table, lines)
            sizes[table] = count
            print(f"  COPY {table}: {count:,} rows in {seconds:.1f} s ({count / seconds:,.0f} rows/s)", flush=True)
        copied = time.perf_counter() - copied
        indexed = time.perf_counter()

        def cost(definition: str) -> tuple[bool, int]:
            table = re.search(r" ON public\.(\w+) ", definition)
            return " USING gin " in definition, sizes.get(table.group(1) if table else "", 0)

        build_indexes(url, sorted(indexes.values(), key=cost, reverse=True))
        for table, constraint in keys:
            conn.execute(f"ALTER TABLE {table} ADD CONSTRAINT {constraint} PRIMARY KEY USING INDEX {constraint}")
        indexed = time.perf_counter() - indexed
        if schema_of(conn) != (indexes, keys):
            raise RuntimeError("the rebuilt indexes differ from the migrated schema")
        ledger = [("app.bsky.feed.post", posts), ("app.bsky.feed.like", sizes["appview_like"]),
                  ("app.bsky.feed.repost", sizes["appview_repost"]), ("app.bsky.graph.follow", sizes["appview_follow"]),
                  ("app.bsky.actor.profile", sizes["appview_profile"]), ("actor", actors)]
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO appview_rowcountdelta (key, delta) VALUES (%s, %s)", ledger)
            # The hidden accounts' shares of the counts, as the worker keeps them (the migration's own query).
            cur.execute(importlib.import_module("appview.migrations.0008_hidden_share").FILL)
        analyzed = time.perf_counter()
        conn.execute(f"ANALYZE {', '.join(TABLES)}")
        analyzed = time.perf_counter() - analyzed
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    total = time.perf_counter() - started
    print(f"database built in {total:.1f} s: generating {generated:.1f} s, COPY {copied:.1f} s (rows made"
          f" meanwhile), indexes and primary keys {indexed:.1f} s, ANALYZE {analyzed:.1f} s;"
          f" {sum(sizes.values()):,} rows, {size / 2**30:.2f} GiB", flush=True)
    BUILD.update(total=total, generated=generated, copied=copied, indexed=indexed, analyzed=analyzed,
                 rows=sum(sizes.values()), size=size)


BUILD: dict[str, float] = {}


def _comment(admin_url: str, name: str) -> str | None:
    """The comment on database ``name`` ("" when it has none), or None when it does not exist."""
    with connect(admin_url) as conn:
        row = conn.execute("SELECT coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database"
                           " WHERE datname = %s", [name]).fetchone()
    return None if row is None else row[0]


@contextmanager
def bench_database(keep: str | None, actors: int, posts: int, seed: int) -> Iterator[str]:
    """The URL of a database holding the data: a scratch one dropped at exit, or ``keep`` (built if it does
    not exist or a build of it was interrupted, else reused as it is)."""
    admin_url = shared_admin_url()
    if keep is None:
        with scratch_database(admin_url) as url:
            build(url, actors, posts, seed)
            yield url
        return
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", keep):
        raise SystemExit(f"--keep-db {keep!r}: use lower-case letters, digits and underscores")
    url = with_database(admin_url, keep)
    comment = _comment(admin_url, keep)
    if comment is not None and comment.startswith(BUILT):
        print(f"reusing database {keep} ({comment})", flush=True)
        yield url
        return
    if comment is not None and comment != BUILDING:
        raise SystemExit(f"database {keep} exists and was not built by this benchmark: choose another name")
    with connect(admin_url) as conn:
        if comment == BUILDING:
            print(f"database {keep}: an earlier build was interrupted; building it again", flush=True)
            conn.execute(f'DROP DATABASE "{keep}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{keep}"')
        conn.execute(f"COMMENT ON DATABASE \"{keep}\" IS '{BUILDING}'")
    run_migrate(url)
    build(url, actors, posts, seed)
    with connect(admin_url) as conn:
        conn.execute(f"COMMENT ON DATABASE \"{keep}\" IS '{BUILT}: posts={posts} actors={actors} seed={seed}'")
    yield url


# -- Targets -------------------------------------------------------------------------------------------

@dataclass
class Targets:
    paths: dict[str, list[bytes]]  # request paths per endpoint, in a random order
    notes: dict[str, str]  # what the targets are
    profile: str = ""  # a typical actor (for the plans)
    most_followed: str = ""
    busiest: str = ""
    big_thread: str = ""  # the target root with the most replies
    typical_thread: str = ""  # a target root with a median number of replies
    posts: list[str] = field(default_factory=list)


def xrpc_path(nsid: str, query: list[tuple[str, str]]) -> bytes:
    return f"/xrpc/{nsid}?{urlencode(query, quote_via=quote)}".encode()


def pick_targets(url: str, seed: int, count: int = 20_000) -> Targets:
    rng = random.Random(seed + 2)
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        shown = conn.execute(f"SELECT did, handle, posts_count, followers_count FROM appview_actor a"
                             f" WHERE {visible('a')}").fetchall()
        sizes = conn.execute("SELECT reply_root_uri, count(*) FROM appview_post WHERE reply_root_uri IS NOT NULL"
                             " GROUP BY 1 HAVING count(*) >= %s", [THREAD_MIN_REPLIES]).fetchall()
        total = conn.execute("SELECT reltuples FROM pg_class WHERE relname = 'appview_post'").fetchone()[0]
        sample = conn.execute(f"SELECT p.uri FROM appview_post p TABLESAMPLE BERNOULLI (%s) JOIN appview_actor a"
                              f" ON a.did = p.did WHERE {visible('a')}",
                              [min(100.0, 100.0 * count * 1.5 / max(total, 1))]).fetchall()
    dids = {did for did, _, _, _ in shown}
    paths: dict[str, list[bytes]] = {}
    notes: dict[str, str] = {}
    chosen = [rng.choice(shown) for _ in range(count)]
    paths[PROFILE] = [xrpc_path(PROFILE, [("actor", handle if rng.random() < 0.2 else did)])
                      for did, handle, _, _ in chosen]
    followers = sorted(row[3] for row in chosen)
    notes[PROFILE] = (f"{len(shown):,} visible actors, uniformly; 20% named by handle; followers of the targets:"
                      f" median {followers[len(followers) // 2]:,}, p99 {followers[int(len(followers) * 0.99)]:,},"
                      f" max {followers[-1]:,}")
    busy = sorted(shown, key=lambda row: row[2], reverse=True)[:BUSY_AUTHORS]
    paths[AUTHOR_FEED] = [xrpc_path(AUTHOR_FEED, [("actor", rng.choice(busy)[0]), ("limit", "50")])
                          for _ in range(count)]
    notes[AUTHOR_FEED] = (f"the {len(busy)} visible actors with the most posts ({busy[-1][2]:,} to {busy[0][2]:,}),"
                          " limit 50")
    roots = [(uri, n) for uri, n in sizes if uri[5:].split("/", 1)[0] in dids]
    picked = [rng.choice(roots) for _ in range(count)]
    paths[THREAD] = [xrpc_path(THREAD, [("uri", uri)]) for uri, _ in picked]
    replies = sorted(n for _, n in picked)
    notes[THREAD] = (f"{len(roots):,} roots with at least {THREAD_MIN_REPLIES} replies, uniformly; replies in the"
                     f" target threads: median {replies[len(replies) // 2]}, p90 {replies[int(len(replies) * 0.9)]},"
                     f" p99 {replies[int(len(replies) * 0.99)]}, max {replies[-1]} (default depth 6, parentHeight 80)")
    uris = [uri for (uri,) in sample]
    paths[POSTS] = [xrpc_path(POSTS, [("uris", uri) for uri in rng.sample(uris, POSTS_PER_CALL)])
                    for _ in range(count)]
    notes[POSTS] = f"{POSTS_PER_CALL} URIs drawn from {len(uris):,} random posts of visible authors"
    by_followers = max(shown, key=lambda row: row[3])
    median_thread = sorted(picked, key=lambda row: row[1])[len(picked) // 2]
    return Targets(paths=paths, notes=notes, profile=chosen[0][0], most_followed=by_followers[0], busiest=busy[0][0],
                   big_thread=max(picked, key=lambda row: row[1])[0], typical_thread=median_thread[0],
                   posts=rng.sample(uris, POSTS_PER_CALL))


# -- Servers -------------------------------------------------------------------------------------------

@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]
    log: Path


@dataclass(frozen=True)
class Setup:
    """How the API is served in one round of the load: daphne processes, and PostgreSQL settings appended to the
    web connections' options (through DATABASE_URL's ``options``, which config.settings extends)."""

    processes: int
    pg_options: str = ""

    @property
    def label(self) -> str:
        return f"{self.processes}" + (f", {self.pg_options}" if self.pg_options else "")

    def database_url(self, url: str) -> str:
        return f"{url}?{urlencode({'options': self.pg_options})}" if self.pg_options else url


def start_servers(setup: Setup, database_url: str, prefix: str, log_dir: Path) -> list[Server]:
    servers = []
    database_url = setup.database_url(database_url)
    for _ in range(setup.processes):
        port = free_port()
        log = log_dir / f"daphne-{port}.log"
        env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "REDIS_KEY_PREFIX": prefix,
               "SECRET_KEY": secrets.token_urlsafe(50), "XRPC_RATE_LIMIT": "100000000", "DEBUG": "false"}
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [str(Path(sys.executable).parent / "daphne"), "-b", "127.0.0.1", "-p", str(port),
                 "config.asgi:application"],
                cwd=BASE_DIR, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches this script only, which stops daphne itself
            )
        servers.append(Server(port, process, log))
    return servers


def stop_servers(servers: list[Server]) -> None:
    """Stops the daphne processes (SIGTERM, then SIGKILL after 5 s); prints the log of any that had exited."""
    for server in servers:
        if server.process.poll() is not None:
            print(f"daphne on port {server.port} had exited ({server.process.returncode}):\n"
                  f"{server.log.read_text(errors='replace')[-2000:]}")
        else:
            server.process.terminate()
    for server in servers:
        try:
            server.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=10)


def fetch(port: int, path: bytes, timeout: float = 30) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path.decode())
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_ready(server: Server, path: bytes, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"daphne exited:\n{server.log.read_text(errors='replace')[-3000:]}")
        with suppress(OSError):
            fetch(server.port, path, timeout=5)
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"daphne on port {server.port} did not answer in {timeout} s")
        time.sleep(0.2)


def describe(nsid: str, body: bytes) -> str:
    """What a response holds, to show the requests do the work they should."""
    value = orjson.loads(body)
    if nsid == PROFILE:
        return f"profile of @{value.get('handle')}, {value.get('followersCount')} followers"
    if nsid == AUTHOR_FEED:
        return f"{len(value.get('feed', []))} feed items"
    if nsid == POSTS:
        return f"{len(value.get('posts', []))} posts"

    def count(node: dict[str, Any]) -> int:
        return sum(1 + count(child) for child in node.get("replies", []))

    return f"a thread with {count(value.get('thread', {}))} replies shown"


# -- Load ----------------------------------------------------------------------------------------------

class Connection:
    """One keep-alive HTTP/1.1 connection, GET only."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def get(self, path: bytes) -> tuple[int, bytes]:
        for attempt in range(2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            assert self.reader is not None
            self.writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            try:
                head = await self.reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                self.close()  # the server closed an idle connection: once more on a new one
                if attempt:
                    raise
                continue
            return int(head[9:12]), await self._body(head.lower())
        raise AssertionError("unreachable")

    async def _body(self, head: bytes) -> bytes:
        reader = self.reader
        assert reader is not None
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            body = await reader.readexactly(int(head[at + 17:head.index(b"\r\n", at + 2)]))
        elif b"\r\ntransfer-encoding: chunked" in head:
            chunks = []
            while size := int((await reader.readline()).split(b";")[0], 16):
                chunks.append(await reader.readexactly(size))
                await reader.readexactly(2)
            while await reader.readline() not in (b"\r\n", b""):
                pass
            body = b"".join(chunks)
        else:
            body = await reader.read()
            self.close()
        if b"\r\nconnection: close" in head:
            self.close()
        return body


@dataclass
class Phase:
    nsid: str
    setup: str  # Setup.label
    mode: str  # "open" or "closed"
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[max(math.ceil(q * len(ordered)) - 1, 0)] * 1000 if ordered else math.nan

    @property
    def non_200(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != 200)

    def others_share(self, cores: int) -> float:
        """The share of the machine's CPU that processes other than the measured ones used in this phase."""
        ours = sum(value for name, value in self.cpu.items() if name != "machine" and not math.isnan(value))
        return max(self.cpu.get("machine", 0.0) - ours, 0.0) / (self.seconds * cores) if self.seconds else math.nan

    def per_request(self, name: str) -> float:
        """CPU microseconds per request of one process group."""
        return self.cpu.get(name, 0.0) / self.requests * 1e6 if self.requests else math.nan


async def _call(conn: Connection, path: bytes, phase: Phase) -> None:
    try:
        status, body = await conn.get(path)
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        conn.close()
        status, body = 0, repr(exc).encode()
    phase.statuses[status] += 1
    if status != 200 and len(phase.errors) < 5:
        phase.errors.append(f"{status}: {body[:300].decode(errors='replace')}")


async def open_loop(conns: list[Connection], paths: Iterator[bytes], phase: Phase, rate: float,
                    duration: float) -> None:
    """Requests due every 1/rate s whatever the answers; a request waits for a free connection when all are busy,
    and its latency runs from when it was due."""
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

    async def worker(conn: Connection) -> None:
        while (item := await queue.get()) is not None:
            due, path = item
            await _call(conn, path, phase)
            phase.latencies.append(time.perf_counter() - due)

    tasks = [asyncio.create_task(worker(conn)) for conn in conns]
    start = time.perf_counter() + 0.01
    for i in range(round(rate * duration)):
        due = start + i / rate
        if (wait := due - time.perf_counter()) > 0:
            await asyncio.sleep(wait)
        queue.put_nowait((due, next(paths)))
    for _ in tasks:
        queue.put_nowait(None)
    await asyncio.gather(*tasks)
    phase.seconds = time.perf_counter() - start


async def closed_loop(conns: list[Connection], paths: Iterator[bytes], phase: Phase, duration: float) -> None:
    """Each connection sends its next request as soon as the previous one is answered."""
    start = time.perf_counter()
    deadline = start + duration

    async def client(conn: Connection) -> None:
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            await _call(conn, next(paths), phase)
            phase.latencies.append(time.perf_counter() - sent)

    await asyncio.gather(*(client(conn) for conn in conns))
    phase.seconds = time.perf_counter() - start


def track_parallel_workers(postmaster: int, pipe: Any) -> None:
    """Runs in a process of its own (so that it shares no GIL with the load generator). Parallel query workers
    live for milliseconds, too short for the sampler, and their titles name their leader's PID, not the
    database: every millisecond this reads the postmaster's children and the CPU time of those that are
    parallel workers (``/proc/PID/schedstat``, in ns; what a worker uses after the last read before it exits,
    under a millisecond, is missed). Answers each message on ``pipe`` with the ns used so far per leader PID;
    stops on None. Files stay open and are re-read with pread (procfs regenerates them), to keep this cheap."""
    children = os.open(f"/proc/{postmaster}/task/{postmaster}/children", os.O_RDONLY)
    worker = re.compile(rb"parallel worker for PID (\d+)")
    live: dict[int, tuple[int, int, int]] = {}  # worker pid -> (leader pid, schedstat fd, ns so far)
    ended: dict[int, int] = {}  # leader pid -> ns of its ended workers
    others: set[int] = set()
    while True:
        if pipe.poll():
            if pipe.recv() is None:
                return
            totals = dict(ended)
            for leader, _, ns in live.values():
                totals[leader] = totals.get(leader, 0) + ns
            pipe.send(totals)
        pids = {int(pid) for pid in os.pread(children, 1 << 16, 0).split()}
        for pid in pids - others - live.keys():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as file:
                    title = file.read()
                if (found := worker.search(title)) is not None:
                    live[pid] = (int(found.group(1)), os.open(f"/proc/{pid}/schedstat", os.O_RDONLY), 0)
                elif title.startswith(b"postgres:"):  # else just forked: its title is not set yet
                    others.add(pid)
            except OSError:
                pass
        for pid, (leader, fd, ns) in list(live.items()):
            try:
                live[pid] = (leader, fd, int(os.pread(fd, 128, 0).split()[0]))
            except (OSError, ValueError, IndexError):
                os.close(fd)
                del live[pid]
                ended[leader] = ended.get(leader, 0) + ns
        others &= pids
        time.sleep(0.001)


class CpuMeter:
    """CPU seconds used so far by the daphne processes, the database's PostgreSQL backends (ended ones
    included) and the parallel workers they led, the Redis server and this script (with its worker tracker),
    sampled from /proc in a thread every SAMPLE_SECONDS."""

    def __init__(self, database: str) -> None:
        self.postgres = PostgresProcesses(database)
        self.seen: dict[str, dict[int, float]] = {"daphne": {}, "postgres": {}, "redis": {}}
        self.daphne: dict[int, psutil.Process] = {}
        self.redis = _redis_server()
        self.tracker: Any = None
        self.tracker_pipe: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._next_scan = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def watch(self, servers: list[Server]) -> None:
        with self._lock:
            self.daphne = {server.process.pid: psutil.Process(server.process.pid) for server in servers}

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.sample()

    def sample(self) -> None:
        with self._lock:
            if time.monotonic() >= self._next_scan:
                self._next_scan = time.monotonic() + 1.0
                self.postgres.scan()
            for name, processes in (("daphne", self.daphne), ("postgres", self.postgres.backends),
                                    ("redis", {p.pid: p for p in self.redis})):
                for pid, process in list(processes.items()):
                    with suppress(psutil.Error):
                        self.seen[name][pid] = cpu_seconds(process)
    def start_tracker(self) -> None:
        """Starts the parallel worker tracker on the postmaster of the backends seen so far."""
        import multiprocessing

        self._next_scan = 0.0
        self.sample()
        with self._lock:
            if self.tracker is not None:
                return
            postmaster = None
            for backend in self.postgres.backends.values():
                with suppress(psutil.Error):
                    postmaster = backend.ppid()
                    break
            if postmaster is None:
                print("no PostgreSQL backend of the database found: parallel workers are not counted")
                return
            context = multiprocessing.get_context("spawn")
            self.tracker_pipe, child = context.Pipe()
            self.tracker = context.Process(target=track_parallel_workers, args=(postmaster, child), daemon=True)
            self.tracker.start()

    def _parallel_workers(self) -> tuple[float, float]:
        """CPU seconds of the parallel workers led by this database's backends, and of the tracker itself."""
        if self.tracker is None or not self.tracker.is_alive():
            return math.nan, 0.0
        self.tracker_pipe.send("report")
        if not self.tracker_pipe.poll(5):
            return math.nan, 0.0
        by_leader = self.tracker_pipe.recv()
        with self._lock:
            ours = sum(ns for leader, ns in by_leader.items() if leader in self.seen["postgres"]) / 1e9
        with suppress(psutil.Error):
            return ours, cpu_seconds(psutil.Process(self.tracker.pid))
        return ours, 0.0

    def snapshot(self) -> dict[str, float]:
        self._next_scan = 0.0  # notice the backends that started just now
        self.sample()
        with self._lock:
            totals = {name: sum(values.values()) for name, values in self.seen.items()}
        totals["parallel"], tracker = self._parallel_workers()
        totals["client"] = time.process_time() + tracker
        # Busy CPU seconds of the whole machine (guest time is already in user and nice).
        machine = psutil.cpu_times()._asdict()
        totals["machine"] = sum(value for name, value in machine.items()
                                if name not in ("idle", "iowait", "guest", "guest_nice"))
        return totals

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.tracker is not None:
            with suppress(OSError, ValueError):
                self.tracker_pipe.send(None)
            self.tracker.join(timeout=5)
            if self.tracker.is_alive():
                self.tracker.kill()


def _redis_server() -> list[psutil.Process]:
    """The redis-server listening on REDIS_URL's port (the shared one: other users' commands count too)."""
    port = re.search(r":(\d+)", REDIS_URL.split("//", 1)[1])
    wanted = f":{port.group(1) if port else 6379}"
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        with suppress(psutil.Error):
            if process.info["name"] == "redis-server" and wanted in " ".join(process.info["cmdline"] or ()):
                found.append(process)
    return found


async def run_endpoint(nsid: str, setup: Setup, servers: list[Server], targets: Targets, meter: CpuMeter,
                       args: argparse.Namespace) -> list[Phase]:
    paths = cycle(targets.paths[nsid])
    conns = [Connection(servers[i % len(servers)].port) for i in range(args.concurrency)]
    try:
        await closed_loop(conns, paths, Phase(nsid, setup.label, "warm-up"), WARMUP_SECONDS)
        phases = []
        for mode in ("open", "closed"):
            phase = Phase(nsid, setup.label, mode)
            before = meter.snapshot()
            if mode == "open":
                await open_loop(conns, paths, phase, args.rate, args.duration)
            else:
                await closed_loop(conns, paths, phase, args.duration)
            after = meter.snapshot()
            phase.cpu = {name: after[name] - before[name] for name in after}
            phases.append(phase)
            print(f"  {nsid} [{setup.label}] {mode:6}: {phase.requests:6,} requests {phase.rate:7,.1f}/s"
                  f"  p50 {phase.percentile(0.5):6.1f} ms  p99 {phase.percentile(0.99):6.1f} ms"
                  f"  non-200 {phase.non_200}  CPU/request: daphne {phase.per_request('daphne'):,.0f} µs,"
                  f" PostgreSQL {phase.per_request('postgres'):,.0f} µs + its parallel workers"
                  f" {phase.per_request('parallel'):,.0f} µs", flush=True)
            for error in phase.errors:
                print(f"    {error}")
        return phases
    finally:
        for conn in conns:
            conn.close()


def run_load(setups: list[Setup], database_url: str, prefix: str, targets: Targets, meter: CpuMeter,
             args: argparse.Namespace, log_dir: Path) -> list[Phase]:
    import uvloop

    phases: list[Phase] = []
    for setup in setups:
        servers = start_servers(setup, database_url, prefix, log_dir)
        try:
            for server in servers:
                wait_ready(server, targets.paths[PROFILE][0])
            meter.watch(servers)
            meter.start_tracker()
            print(f"daphne: {setup.processes} process(es) on port(s) {', '.join(str(s.port) for s in servers)}"
                  + (f", PostgreSQL options {setup.pg_options!r}" if setup.pg_options else ""), flush=True)
            for nsid in ENDPOINTS:
                status, body = fetch(servers[0].port, targets.paths[nsid][0])
                print(f"  check {nsid}: HTTP {status}, {len(body):,} bytes, "
                      + (describe(nsid, body) if status == 200 else body[:200].decode(errors="replace")))
            for nsid in ENDPOINTS:
                phases += uvloop.run(run_endpoint(nsid, setup, servers, targets, meter, args))
        finally:
            stop_servers(servers)
    return phases


# -- Plans ---------------------------------------------------------------------------------------------

SCAN = re.compile(r"(Seq Scan|Parallel Seq Scan|Index Only Scan|Index Scan|Bitmap Heap Scan|Bitmap Index Scan"
                  r"|CTE Scan|Function Scan|WorkTable Scan)(?: Backward)?(?: using (\S+))?(?: on (\S+))?")


@dataclass
class Plan:
    title: str
    sql: str
    lines: list[str]
    serial: list[str] | None = None  # the plan without parallel workers, when this one has some

    @property
    def parallel(self) -> bool:
        return "Workers Launched" in self.text

    @property
    def serial_ms(self) -> float:
        return _execution_ms("\n".join(self.serial)) if self.serial else math.nan

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def execution_ms(self) -> float:
        return _execution_ms(self.text)

    @property
    def buffers(self) -> str:
        for line in self.lines:
            if "Buffers:" in line:
                return line.split("Buffers:", 1)[1].strip()
        return ""

    @property
    def scans(self) -> list[str]:
        found = []
        for kind, index, table in SCAN.findall(self.text):
            if kind in ("CTE Scan", "WorkTable Scan", "Function Scan"):
                continue
            label = f"{kind} {index} on {table}" if index and table else f"{kind} {index or table}"
            if label not in found:
                found.append(label)
        return found

    @property
    def big_seq_scans(self) -> list[str]:
        return sorted({table for kind, _, table in SCAN.findall(self.text) if "Seq Scan" in kind and table in TABLES})


def _execution_ms(text: str) -> float:
    found = re.search(r"Execution Time: ([\d.]+) ms", text)
    return float(found.group(1)) if found else math.nan


def explain(sql: str, params: Any, *, serial: bool = False) -> list[str]:
    """The plan of the median of EXPLAIN_RUNS runs (by execution time); with ``serial``, without parallel
    workers (max_parallel_workers_per_gather = 0 for this transaction only)."""
    from django.db import connection, transaction

    runs = []
    for _ in range(EXPLAIN_RUNS):
        with transaction.atomic(), connection.cursor() as cursor:
            if serial:
                cursor.execute("SET LOCAL max_parallel_workers_per_gather = 0")
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
            runs.append([row[0] for row in cursor.fetchall()])
    runs.sort(key=lambda lines: _execution_ms("\n".join(lines)))
    return runs[len(runs) // 2]


def captured(call: Callable[[], Any]) -> list[tuple[str, Any]]:
    """The SELECT statements ``call`` sends (with their parameters), as the server runs it: in a read-only
    transaction."""
    from django.db import connection, transaction

    statements: list[tuple[str, Any]] = []

    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        statements.append((sql, params))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION READ ONLY")
        call()
    return [(sql, params) for sql, params in statements
            if sql.lstrip(" (").upper().startswith(("SELECT", "WITH"))]


def plans_of(title: str, call: Callable[[], Any]) -> list[Plan]:
    plans = []
    for sql, params in captured(call):
        plan = Plan(title, sql, explain(sql, params))
        if plan.parallel:
            plan.serial = explain(sql, params, serial=True)
        plans.append(plan)
    return plans


def endpoint_call(nsid: str, query: list[tuple[str, str]]) -> Callable[[], Any]:
    from django.http import QueryDict

    from xrpc import params
    from xrpc.queries import QUERIES

    def call() -> Any:
        return QUERIES[nsid](params.parse(nsid, QueryDict(urlencode(query))))

    return call


@dataclass
class EndpointPlans:
    nsid: str
    main: list[Plan]
    others: list[tuple[str, list[Plan]]]  # (what was called, plans of every query it sent)
    problems: list[str] = field(default_factory=list)


def all_plans(targets: Targets) -> list[EndpointPlans]:
    from xrpc import hydration, selectors

    post_count = dict(hydration.query("SELECT did, posts_count FROM appview_actor WHERE did = ANY(%s)",
                                      [[targets.busiest]]))
    thread_size = dict(hydration.query("SELECT reply_root_uri, count(*) FROM appview_post WHERE reply_root_uri ="
                                       " ANY(%s) GROUP BY 1", [[targets.big_thread, targets.typical_thread]]))
    deep = hydration.query("SELECT uri FROM appview_post WHERE reply_root_uri = %s AND reply_parent_uri <>"
                           " reply_root_uri ORDER BY sort_at DESC LIMIT 1", [targets.big_thread])
    followers = dict(hydration.query("SELECT did, followers_count FROM appview_actor WHERE did = ANY(%s)",
                                     [[targets.profile, targets.most_followed]]))
    specs: list[tuple[str, list[tuple[str, Callable[[], Any]]], list[tuple[str, Callable[[], Any]]]]] = [
        (PROFILE,
         [(f"hydration.actors: the most followed actor ({followers.get(targets.most_followed, 0):,} followers)",
           lambda: hydration.actors([targets.most_followed]))],
         [(f"getProfile of a random target ({followers.get(targets.profile, 0):,} followers)",
           endpoint_call(PROFILE, [("actor", targets.profile)])),
          (f"getProfile of the most followed actor ({followers.get(targets.most_followed, 0):,} followers)",
           endpoint_call(PROFILE, [("actor", targets.most_followed)]))]),
        (AUTHOR_FEED,
         [(f"selectors.author_feed: the busiest author ({post_count.get(targets.busiest, 0):,} posts), limit 50",
           lambda: selectors.author_feed(targets.busiest, kind="posts_with_replies", limit=50, cursor=None))],
         [("getAuthorFeed of the busiest author, limit 50",
           endpoint_call(AUTHOR_FEED, [("actor", targets.busiest), ("limit", "50")]))]),
        (THREAD,
         [(f"selectors.thread_replies: the largest target thread ({thread_size.get(targets.big_thread, 0)} replies),"
           " depth 6", lambda: selectors.thread_replies(targets.big_thread, 6)),
          ("selectors.thread_ancestors: a reply below a reply in that thread, height 80",
           lambda: selectors.thread_ancestors(deep[0][0] if deep else targets.big_thread, 80))],
         [(f"getPostThread of a median target thread ({thread_size.get(targets.typical_thread, 0)} replies)",
           endpoint_call(THREAD, [("uri", targets.typical_thread)])),
          (f"getPostThread of the largest target thread ({thread_size.get(targets.big_thread, 0)} replies)",
           endpoint_call(THREAD, [("uri", targets.big_thread)]))]),
        (POSTS,
         [(f"hydration.posts: {len(targets.posts)} random posts", lambda: hydration.posts(targets.posts))],
         [(f"getPosts of {len(targets.posts)} random posts",
           endpoint_call(POSTS, [("uris", uri) for uri in targets.posts]))]),
    ]
    found = []
    for nsid, mains, whole in specs:
        result = EndpointPlans(nsid, [], [])
        for title, call in mains:
            try:
                for plan in plans_of(title, call):
                    result.main.append(plan)
            except Exception as exc:  # xrpc/ is edited meanwhile: a changed signature must not end the run
                result.problems.append(f"{title}: could not be explained ({exc!r})")
        for title, call in whole:
            try:
                result.others.append((title, plans_of(title, call)))
            except Exception as exc:
                result.problems.append(f"{title}: could not be explained ({exc!r})")
        found.append(result)
    return found


def print_plans(plans: list[EndpointPlans]) -> None:
    for endpoint in plans:
        print(f"\n## {endpoint.nsid}: query plans")
        for plan in endpoint.main:
            print(f"\n### main query: {plan.title}\n{_short_sql(plan.sql, 600)}\n")
            print(plan.text)
            verdict = ("SEQUENTIAL SCAN of " + ", ".join(plan.big_seq_scans)) if plan.big_seq_scans else \
                "index scans only on the big tables"
            print(f"-> {verdict}; {plan.execution_ms:.2f} ms{_serial_note(plan)}")
        for title, queries in endpoint.others:
            total = sum(plan.execution_ms for plan in queries)
            print(f"\n### every query of {title}: {len(queries)} queries, {total:.2f} ms of execution in all")
            for n, plan in enumerate(queries, 1):
                flag = f"  <-- Seq Scan on {', '.join(plan.big_seq_scans)}" if plan.big_seq_scans else ""
                print(f"  {n}. {plan.execution_ms:7.2f} ms  {'; '.join(plan.scans) or 'no table scanned'}"
                      f"  [{plan.buffers}]{flag}{_serial_note(plan)}\n       {_short_sql(plan.sql, 160)}")
            for n, plan in enumerate(queries, 1):
                if plan.big_seq_scans or plan.execution_ms >= SLOW_QUERY_MS:
                    print(f"\n  query {n} in full ({plan.execution_ms:.2f} ms):\n  {_short_sql(plan.sql, 2000)}\n")
                    print("\n".join("    " + _short_sql(line, 400) for line in plan.lines))
                    if plan.serial:
                        print(f"\n  the same without parallel workers ({plan.serial_ms:.2f} ms):\n")
                        print("\n".join("    " + _short_sql(line, 400) for line in plan.serial))
        for problem in endpoint.problems:
            print(f"  ! {problem}")


def _serial_note(plan: Plan) -> str:
    if not plan.parallel:
        return ""
    return f"  (parallel plan; {plan.serial_ms:.2f} ms with max_parallel_workers_per_gather = 0)"


def _short_sql(sql: str, limit: int) -> str:
    sql = " ".join(sql.split())
    return sql if len(sql) <= limit else sql[:limit] + " ..."


# -- Report --------------------------------------------------------------------------------------------

def machine_note() -> str:
    cpu = "unknown CPU"
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = psutil.virtual_memory().total / 2**30
    with psycopg.connect(conninfo(shared_admin_url()), autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        shared = conn.execute("SHOW shared_buffers").fetchone()[0]
    return (f"{len(os.sched_getaffinity(0))} cores ({cpu}), {memory:.1f} GiB RAM, Linux {platform.release()};"
            f" PostgreSQL {version} (the machine's server, shared_buffers {shared}), the machine's Redis,"
            f" Python {platform.python_version()}")


def summary_table(phases: list[Phase], rate: float) -> list[str]:
    by_key = {(p.nsid, p.setup, p.mode): p for p in phases}
    lines = [
        f"| endpoint | daphne processes | open loop: rate | p50 | p99 | p99 < {TARGET_P99_MS:.0f} ms |"
        " max req/s (8 clients) | p50 / p99 at max | CPU per request at max: daphne + PostgreSQL backends"
        " (+ their parallel workers) |"
        " non-200 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for nsid in ENDPOINTS:
        for setup in dict.fromkeys(p.setup for p in phases):
            opened, closed = by_key.get((nsid, setup, "open")), by_key.get((nsid, setup, "closed"))
            if opened is None or closed is None:
                continue
            p99 = opened.percentile(0.99)
            lines.append(
                f"| {nsid.rsplit('.', 1)[1]} | {setup} | {opened.rate:.1f}/s (asked {rate:g}) |"
                f" {opened.percentile(0.5):.1f} ms | {p99:.1f} ms | {'yes' if p99 < TARGET_P99_MS else '**no**'} |"
                f" {closed.rate:,.0f} | {closed.percentile(0.5):.1f} / {closed.percentile(0.99):.1f} ms |"
                f" {closed.per_request('daphne'):,.0f} + {closed.per_request('postgres'):,.0f}"
                f" (+ {closed.per_request('parallel'):,.0f}) µs | {opened.non_200 + closed.non_200} |")
    return lines


def cpu_table(phases: list[Phase]) -> list[str]:
    cores = len(os.sched_getaffinity(0))
    lines = [
        "| endpoint | daphne processes | loop | requests | req/s | daphne µs/req | daphne % of a core |"
        " PostgreSQL backends µs/req | their parallel workers µs/req |"
        " Redis µs/req | load generator µs/req | others, % of the machine | req/s the CPU per request allows on"
        f" {cores} cores |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in phases:
        other = p.per_request("parallel")
        other = 0.0 if math.isnan(other) else other
        server_cpu = p.per_request("daphne") + p.per_request("postgres") + other + p.per_request("redis")
        lines.append(
            f"| {p.nsid.rsplit('.', 1)[1]} | {p.setup} | {p.mode} | {p.requests:,} | {p.rate:,.1f} |"
            f" {p.per_request('daphne'):,.0f} | {p.cpu.get('daphne', 0) / p.seconds:.0%} |"
            f" {p.per_request('postgres'):,.0f} | {other:,.0f} | {p.per_request('redis'):,.0f} |"
            f" {p.per_request('client'):,.0f} | {p.others_share(cores):.0%} |"
            f" {cores / server_cpu * 1e6:,.0f} |")
    return lines


def plan_summary(plans: list[EndpointPlans]) -> list[str]:
    lines = []
    for endpoint in plans:
        for plan in endpoint.main:
            seq = ("**Seq Scan on " + ", ".join(plan.big_seq_scans) + "**") if plan.big_seq_scans else \
                "no Seq Scan on a big table"
            lines.append(f"- {endpoint.nsid.rsplit('.', 1)[1]}, {plan.title}: {plan.execution_ms:.2f} ms, "
                         f"{'; '.join(plan.scans)}; {seq} (buffers: {plan.buffers or 'none'}){_serial_note(plan)}.")
        for title, queries in endpoint.others:
            flagged = [f"query {n} ({', '.join(p.big_seq_scans)})" for n, p in enumerate(queries, 1)
                       if p.big_seq_scans]
            parallel = [f"query {n} ({p.execution_ms:.2f} ms; {p.serial_ms:.2f} ms without)"
                        for n, p in enumerate(queries, 1) if p.parallel]
            slowest = max(queries, key=lambda p: p.execution_ms, default=None)
            lines.append(
                f"- {title}: {len(queries)} queries, {sum(p.execution_ms for p in queries):.2f} ms of execution;"
                + (f" slowest {slowest.execution_ms:.2f} ms (`{_short_sql(slowest.sql, 90)}`);" if slowest else "")
                + (f" parallel workers in {', '.join(parallel)};" if parallel else "")
                + (f" **sequential scans: {', '.join(flagged)}**." if flagged else " no Seq Scan on a big table."))
        lines += [f"- {problem}" for problem in endpoint.problems]
    return lines


REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"


def remove_keys(prefix: str) -> None:
    import redis

    with suppress(redis.RedisError), redis.Redis.from_url(REDIS_URL) as client:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--posts", type=int, default=1_000_000)
    parser.add_argument("--actors", type=int, default=100_000)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of each open and closed loop")
    parser.add_argument("--keep-db", metavar="NAME", default=None,
                        help="build the data in database NAME and keep it; reuse it when it is already built")
    parser.add_argument("--servers", default="1,2", help="daphne process counts to run, e.g. 1 or 1,2")
    parser.add_argument("--also-pg-options", metavar="OPTIONS", default="",
                        help="one more round with one daphne process whose PostgreSQL connections get these options,"
                             " e.g. '-c max_parallel_workers_per_gather=0'")
    parser.add_argument("--rate", type=float, default=50.0, help="open-loop requests/s")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--write", type=Path, default=None, help="Markdown file whose Read API section to replace")
    args = parser.parse_args()
    setups = [Setup(int(n)) for n in args.servers.split(",") if n.strip()]
    if args.also_pg_options:
        setups.append(Setup(1, args.also_pg_options))
    if args.posts < 1000 or args.actors < 100:
        raise SystemExit("--posts must be at least 1000 and --actors at least 100")
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    # Django refuses to start without a strong SECRET_KEY (manage.py migrate, this script's own setup for the plans).
    os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
    started = time.time()
    load = [os.getloadavg()]
    prefix = f"bench-api-{uuid.uuid4().hex[:8]}:"
    with ExitStack() as stack:
        stack.callback(remove_keys, prefix)
        log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="api-bench-")))
        url = stack.enter_context(bench_database(args.keep_db, args.actors, args.posts, args.seed))
        targets = pick_targets(url, args.seed)
        for nsid in ENDPOINTS:
            print(f"targets of {nsid}: {targets.notes[nsid]}")
        meter = CpuMeter(database_name(url))
        stack.callback(meter.stop)
        load.append(os.getloadavg())
        phases = run_load(setups, url, prefix, targets, meter, args, log_dir)
        load.append(os.getloadavg())
        os.environ["DATABASE_URL"] = url
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
        import django

        django.setup()
        from django.db import connection

        stack.callback(connection.close)
        plans = all_plans(targets)
        machine = machine_note()
    print_plans(plans)
    table, cpu, summary = summary_table(phases, args.rate), cpu_table(phases), plan_summary(plans)
    non_200 = sum(p.non_200 for p in phases)
    print("\n## Summary\n")
    print("\n".join(table))
    print("\nCPU per request (all phases):\n")
    print("\n".join(cpu))
    print("\nQuery plans:\n")
    print("\n".join(summary))
    print(f"\nnon-200 answers in all phases: {non_200}; load average (1 min) before the build"
          f" {load[0][0]:.2f}, before the load {load[1][0]:.2f}, after it {load[2][0]:.2f}")
    if args.write:
        command = (f".venv/bin/python bench/api_bench.py --posts {args.posts} --actors {args.actors} --duration"
                   f" {args.duration:g} --servers {args.servers} --rate {args.rate:g} --concurrency {args.concurrency}"
                   f" --seed {args.seed}" + (f" --keep-db {args.keep_db}" if args.keep_db else "")
                   + (f" --also-pg-options '{args.also_pg_options}'" if args.also_pg_options else ""))
        built = (f"built in {BUILD['total']:.0f} s: {BUILD['rows']:,.0f} rows, {BUILD['size'] / 2**30:.1f} GiB;"
                 f" generating {BUILD['generated']:.0f} s, COPY {BUILD['copied']:.0f} s, indexes"
                 f" {BUILD['indexed']:.0f} s, ANALYZE {BUILD['analyzed']:.0f} s" if BUILD else "reused as built")
        section = "\n".join([
            "## Read API", "",
            f"`{command}`, {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}.", "",
            f"Machine: {machine}. daphne, PostgreSQL, Redis and the load generator share these cores; load average"
            f" {load[1][0]:.2f} before the load, {load[2][0]:.2f} after it.", "",
            f"Data ({built}). {args.posts:,} posts and {args.actors:,} actors written with COPY (bench/api_bench.py"
            " explains the shape). Targets:", "",
            *[f"- {nsid}: {targets.notes[nsid]}" for nsid in ENDPOINTS], "",
            f"Open loop: {args.rate:g} requests/s for {args.duration:g} s over {args.concurrency} keep-alive"
            f" connections, latency from when each request was due. Closed loop: {args.concurrency} clients for"
            f" {args.duration:g} s. Non-200 answers in all phases: {non_200}.", "",
            *table, "",
            "CPU per request, from /proc: daphne, the database's PostgreSQL backends and the parallel query"
            " workers they led (a tracker reads those every millisecond), the (shared) Redis server, and the load"
            " generator with its trackers; \"others\" is the share of the machine's CPU that none of these used"
            " (other users of the machine). The last column is the rate at which daphne, PostgreSQL and Redis"
            " would keep every core busy.", "",
            *cpu, "",
            f"Query plans (EXPLAIN (ANALYZE, BUFFERS) after the load, so on warm caches; median of {EXPLAIN_RUNS}"
            " runs; the main query of each endpoint, then every query the whole endpoint sends; a parallel plan"
            " is run again with max_parallel_workers_per_gather = 0):", "",
            *summary, "",
            "What these figures mean and what to change: \"Read API: findings\" below.", "",
        ])
        write_section(args.write, section)
        print(f"\nwrote the Read API section of {args.write}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("\ninterrupted: daphne stopped, database dropped unless --keep-db", file=sys.stderr)
        sys.exit(130)
