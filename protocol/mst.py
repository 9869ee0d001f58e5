"""The Merkle Search Tree of a repository (https://atproto.com/specs/repository#mst-structure): keys
("collection/rkey" bytes) mapped to record CIDs, each key placed at the layer given by the leading zero bits
of its SHA-256, so that one key set has exactly one tree and one root CID.

``Tree`` reads nodes lazily from a block source (a CAR's blocks, a store), changes them in place and
re-encodes only the changed ones: the inversion check of a firehose commit touches a handful of nodes of a
partial tree. ``walk`` reads a whole tree once, checking that it is the canonical one.

A node holds ``keys``, ``values`` and ``subtrees`` (one more than keys: ``subtrees[i]`` holds the keys
between ``keys[i-1]`` and ``keys[i]``). A subtree slot is a loaded ``Node``, the CID (bytes) of a node not
loaded yet, or None.
"""

import hashlib
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any, Union

import libipld

from protocol import cborwrite
from protocol.cid import cid_for_block

MAX_KEY_BYTES = 1024
# CID -> the block's bytes, or None when the block is not available.
BlockSource = Callable[[bytes], bytes | None]
Subtree = Union["Node", bytes, None]


class MstError(ValueError):
    """A tree node that is malformed or breaks the tree's rules; the message says which."""


class MissingBlockError(MstError):
    """A node the operation needs is not among the available blocks."""

    def __init__(self, cid: bytes) -> None:
        super().__init__("an MST node block the operation needs is missing")
        self.cid = cid


def key_height(key: bytes) -> int:
    """The layer of a key: leading zero bits of sha256(key), counted two at a time (fanout 16)."""
    return (256 - int.from_bytes(hashlib.sha256(key).digest(), "big").bit_length()) >> 1


def common_prefix_length(left: bytes, right: bytes) -> int:
    """How many leading bytes two keys share (one XOR of big integers rather than a loop over bytes)."""
    length = min(len(left), len(right))
    difference = int.from_bytes(left[:length], "big") ^ int.from_bytes(right[:length], "big")
    return length - ((difference.bit_length() + 7) >> 3)


class Node:
    """A node and its encoding state. A node changed only below (a child's CID changed, its own entries
    did not) keeps its ``block`` and is re-encoded by replacing the children's CIDs in it: most nodes a
    change touches are its ancestors, and a byte replace costs a fraction of an encoding."""

    __slots__ = ("block", "cid", "keys", "referenced_as", "subtrees", "values")

    def __init__(self, keys: list[bytes], values: list[bytes], subtrees: list[Subtree]) -> None:
        self.keys = keys
        self.values = values
        self.subtrees = subtrees
        self.cid: bytes | None = None  # None while the node has changes not encoded yet
        # The encoding of the node's own entries (children's links possibly stale); None: encode in full.
        self.block: bytes | None = None
        # Once changed, the CID the parent's block still names this node by, until the parent is encoded.
        self.referenced_as: bytes | None = None

    def is_empty(self) -> bool:
        return not self.keys and self.subtrees[0] is None

    def changed_below(self) -> None:
        """A subtree's content changed (the same child objects stay in place)."""
        if self.cid is not None:
            self.referenced_as = self.cid
            self.cid = None

    def changed(self) -> None:
        """The node's own keys, values or subtree slots changed."""
        self.changed_below()
        self.block = None


def decode_node(block: bytes) -> Node:
    """A node from its block, its keys rebuilt from the prefix compression. Checks the shape, that keys
    are sorted and unique, and that each entry's prefix length is the exact common prefix with the previous
    key (anything else is a second encoding of the same node, with another CID)."""
    try:
        data: Any = libipld.decode_dag_cbor(block)
    except (ValueError, OverflowError, RecursionError) as exc:
        raise MstError(f"an MST node is not DAG-CBOR: {exc}") from None
    if type(data) is not dict or len(data) != 2 or "e" not in data or "l" not in data:
        raise MstError("an MST node is not a map of exactly 'e' and 'l'")
    entries, left = data["e"], data["l"]
    if type(entries) is not list or not (left is None or type(left) is bytes):
        raise MstError("an MST node's 'e' is not a list or its 'l' is not a link")
    keys: list[bytes] = []
    values: list[bytes] = []
    subtrees: list[Subtree] = [left]
    previous = b""
    for entry in entries:
        try:
            prefix = entry["p"]
            key = previous[:prefix] + entry["k"]  # TypeError unless an integer and a byte string
            value, right = entry["v"], entry["t"]
        except (KeyError, TypeError):
            raise MstError("an MST entry is not a map of 'k', 'p', 't' and 'v' of the right types") from None
        # Sorted and unique; and the exact common prefix: a suffix that starts like the rest of the previous
        # key means a shorter prefix than the common one.
        if (type(value) is not bytes or not (right is None or type(right) is bytes) or len(entry) != 4
                or type(prefix) is not int or not 0 <= prefix <= len(previous) or key <= previous
                or key[prefix:prefix + 1] == previous[prefix:prefix + 1] or len(key) > MAX_KEY_BYTES):
            raise MstError("an MST entry has other fields, or its key is not sorted, unique, short and "
                           "exactly prefix-compressed")
        keys.append(key)
        values.append(value)
        subtrees.append(right)
        previous = key
    return Node(keys, values, subtrees)


def _link(subtree: Subtree) -> bytes:
    """A subtree slot as a CID link or null (subtrees are encoded before their parent)."""
    if subtree is None:
        return cborwrite.NULL
    cid = subtree if type(subtree) is bytes else subtree.cid
    if cid is None:
        raise MstError("a subtree is encoded after its parent")
    return cborwrite.link(cid)


_UNSIGNED = [cborwrite.unsigned(value) for value in range(256)]
_BYTES_HEAD = [cborwrite.head(2, length) for length in range(256)]


def encode_node(node: Node) -> bytes:
    """The node's canonical DAG-CBOR block (subtrees must be encoded first). Written for speed: the
    inversion check of every firehose commit re-encodes the nodes on the paths of its ops."""
    parts = [b"\xa2\x61e", cborwrite.head(4, len(node.keys))]
    previous = b""
    from_bytes = int.from_bytes
    link = cborwrite.link
    for key, value, right in zip(node.keys, node.values, node.subtrees[1:], strict=False):
        length = min(len(previous), len(key))
        # The common prefix's length, from the first differing bit of the two keys as integers.
        prefix = length - ((from_bytes(previous[:length]) ^ from_bytes(key[:length])).bit_length() + 7 >> 3)
        suffix = key[prefix:]
        parts += (b"\xa4\x61k", _BYTES_HEAD[len(suffix)] if len(suffix) < 256 else cborwrite.head(2, len(suffix)),
                  suffix, b"\x61p", _UNSIGNED[prefix] if prefix < 256 else cborwrite.unsigned(prefix),
                  b"\x61t", cborwrite.NULL if right is None else _link(right), b"\x61v", link(value))
        previous = key
    parts += (b"\x61l", _link(node.subtrees[0]))
    return b"".join(parts)


EMPTY_NODE_BLOCK = encode_node(Node([], [], [None]))
EMPTY_TREE_CID = cid_for_block(EMPTY_NODE_BLOCK)


def _nonempty(node: Node) -> Node | None:
    return None if node.is_empty() else node


class Tree:
    """A mutable MST over a block source. ``put``/``delete`` return the key's previous value; nodes are
    loaded on first use and raise ``MissingBlockError`` when their block is not available."""

    __slots__ = ("height", "load", "root")

    def __init__(self, root: bytes | None, load: BlockSource) -> None:
        """``root``: the root node's CID, or None for an empty tree."""
        self.load = load
        self.root: Subtree = None
        self.height = 0
        if root is None or root == EMPTY_TREE_CID:
            return
        node = self._loaded(root)
        if not node.keys:
            # Trees are trimmed: a root with no keys is either the empty tree or not canonical.
            if node.subtrees[0] is not None:
                raise MstError("the MST root has no keys but a subtree (the tree is not trimmed)")
            return
        self.root = node
        self.height = key_height(node.keys[0])

    def _loaded(self, subtree: Node | bytes) -> Node:
        if type(subtree) is Node:
            return subtree
        block = self.load(subtree)
        if block is None:
            raise MissingBlockError(subtree)
        node = decode_node(block)
        node.cid = subtree
        node.block = bytes(block)
        return node

    def _child(self, node: Node, index: int) -> Node | None:
        """The subtree at ``index`` of ``node``, loaded (and kept loaded)."""
        subtree = node.subtrees[index]
        if subtree is None or type(subtree) is Node:
            return subtree
        child = node.subtrees[index] = self._loaded(subtree)
        return child

    def get(self, key: bytes) -> bytes | None:
        height = key_height(key)
        if self.root is None or height > self.height:
            return None
        node = self.root = self._loaded(self.root)
        layer = self.height
        while True:
            index = bisect_left(node.keys, key)
            if layer == height:
                return node.values[index] if index < len(node.keys) and node.keys[index] == key else None
            child = self._child(node, index)
            if child is None:
                return None
            node = child
            layer -= 1

    def put(self, key: bytes, value: bytes) -> bytes | None:
        """Sets ``key`` to ``value``; returns the previous value (None when the key is new)."""
        height = key_height(key)
        if self.root is None:
            self.root = Node([key], [value], [None, None])
            self.height = height
            return None
        root = self._loaded(self.root)
        while height > self.height:  # the key is above every layer: new (keyless) layers on top
            root = Node([], [], [root])
            self.height += 1
        self.root = root
        return self._put(root, self.height, key, height, value)

    def _put(self, node: Node, layer: int, key: bytes, height: int, value: bytes) -> bytes | None:
        index = bisect_left(node.keys, key)
        if layer == height:
            if index < len(node.keys) and node.keys[index] == key:
                previous = node.values[index]
                if previous != value:
                    node.values[index] = value
                    node.changed()
                return previous
            left, right = self._split(node.subtrees[index], key)
            node.keys.insert(index, key)
            node.values.insert(index, value)
            node.subtrees[index:index + 1] = (left, right)
            node.changed()
            return None
        child = self._child(node, index)
        if child is None:
            child = node.subtrees[index] = Node([], [], [None])
            node.changed()
        previous = self._put(child, layer - 1, key, height, value)
        if previous != value:
            node.changed_below()
        return previous

    def _split(self, subtree: Subtree, key: bytes) -> tuple[Node | None, Node | None]:
        """The subtree's keys below ``key`` and above it, as two subtrees of the same layer."""
        if subtree is None:
            return None, None
        node = self._loaded(subtree)
        index = bisect_left(node.keys, key)
        inner = self._child(node, index)
        lower_left, lower_right = self._split(inner, key)
        # A side that keeps the whole node keeps its CID (no re-encoding).
        if index == len(node.keys) and lower_right is None and lower_left is inner:
            return node, None
        if index == 0 and lower_left is None and lower_right is inner:
            return None, node
        left = Node(node.keys[:index], node.values[:index], [*node.subtrees[:index], lower_left])
        right = Node(node.keys[index:], node.values[index:], [lower_right, *node.subtrees[index + 1:]])
        return _nonempty(left), _nonempty(right)

    def delete(self, key: bytes) -> bytes | None:
        """Removes ``key``; returns its previous value (None when it was not there)."""
        height = key_height(key)
        if self.root is None or height > self.height:
            return None
        root = self.root = self._loaded(self.root)
        previous = self._delete(root, self.height, key, height)
        if previous is not None:
            self._trim()
        return previous

    def _delete(self, node: Node, layer: int, key: bytes, height: int) -> bytes | None:
        index = bisect_left(node.keys, key)
        if layer == height:
            if index == len(node.keys) or node.keys[index] != key:
                return None
            previous = node.values[index]
            merged = self._merge(node.subtrees[index], node.subtrees[index + 1])
            del node.keys[index]
            del node.values[index]
            node.subtrees[index:index + 2] = (merged,)
            node.changed()
            return previous
        child = self._child(node, index)
        if child is None:
            return None
        previous = self._delete(child, layer - 1, key, height)
        if previous is not None:
            if child.is_empty():
                node.subtrees[index] = None
                node.changed()
            else:
                node.changed_below()
        return previous

    def _merge(self, left: Subtree, right: Subtree) -> Subtree:
        """One subtree of the keys of two adjacent subtrees of the same layer."""
        if left is None:
            return right
        if right is None:
            return left
        left_node, right_node = self._loaded(left), self._loaded(right)
        middle = self._merge(left_node.subtrees[-1], right_node.subtrees[0])
        return Node(left_node.keys + right_node.keys, left_node.values + right_node.values,
                    [*left_node.subtrees[:-1], middle, *right_node.subtrees[1:]])

    def _trim(self) -> None:
        """Removes keyless layers from the top. A child whose block is not available is assumed to hold
        keys (as indigo does): a proof need not carry it, and if it were keyless the root CID would differ."""
        while self.root is not None:
            if type(self.root) is bytes:
                block = self.load(self.root)
                if block is None:
                    return
                self.root = self._loaded(self.root)
            if self.root.keys:
                return
            self.root = self.root.subtrees[0]
            self.height = self.height - 1 if self.root is not None else 0

    def encode_changes(self) -> list[tuple[bytes, bytes]]:
        """Encodes every node changed since the last call (children first); their (CID, block). An empty
        tree gives the empty node, which is its root."""
        encoded: list[tuple[bytes, bytes]] = []
        if self.root is None:
            encoded.append((EMPTY_TREE_CID, EMPTY_NODE_BLOCK))
        elif type(self.root) is Node and self.root.cid is None:
            _encode(self.root, encoded)
            self.root.referenced_as = None
        return encoded

    def root_cid(self) -> bytes:
        self.encode_changes()
        root = self.root
        if root is None:
            return EMPTY_TREE_CID
        return root if type(root) is bytes else root.cid

    def nodes(self) -> Iterator[Node]:
        """Every node of the tree, parents before children (all loaded on the way)."""
        if self.root is None:
            return
        self.root = self._loaded(self.root)
        stack = [self.root]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(child for index in range(len(node.subtrees)) if (child := self._child(node, index)))

    def covering_proof(self, key: bytes) -> list[Node]:
        """The loaded nodes that prove ``key``'s value or absence and its neighbours: the search path of
        the key and, where the key is, the inner edges of the subtrees on its two sides (what Sync v1.1
        asks a commit to carry, like the reference implementation's covering proof). Encode first."""
        proof: list[Node] = []
        subtree = self.root
        while subtree is not None:
            node = self._loaded(subtree)
            proof.append(node)
            index = bisect_left(node.keys, key)
            if index < len(node.keys) and node.keys[index] == key:
                proof += self._edge(node, index, rightmost=True)
                proof += self._edge(node, index + 1, rightmost=False)
                break
            subtree = self._child(node, index)
        return proof

    def _edge(self, parent: Node, index: int, *, rightmost: bool) -> list[Node]:
        """The nodes down the rightmost (or leftmost) side of the subtree at ``index`` of ``parent``."""
        edge: list[Node] = []
        node = self._child(parent, index)
        while node is not None:
            edge.append(node)
            node = self._child(node, len(node.subtrees) - 1 if rightmost else 0)
        return edge


def _encode(node: Node, encoded: list[tuple[bytes, bytes]]) -> None:
    block = node.block
    for subtree in node.subtrees:
        if type(subtree) is Node and subtree.cid is None:
            _encode(subtree, encoded)
            # A child new under this node (never referenced by it) means the node changed: encode it in full.
            stale = subtree.referenced_as
            block = None if block is None or stale is None else block.replace(stale, subtree.cid, 1)
            subtree.referenced_as = None
    if block is None:
        block = encode_node(node)
    node.block = block
    node.cid = cid_for_block(block)
    encoded.append((node.cid, block))


def walk(root: bytes, load: BlockSource) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) of a whole tree in key order, checking that the tree is canonical: every node
    present and well formed, every key at the layer its hash gives, keys in strictly increasing order
    across the tree, no empty node but an empty tree's root, a trimmed root. Raises ``MstError``
    (``MissingBlockError`` for an absent node)."""

    def loaded(cid: bytes) -> Node:
        block = load(cid)
        if block is None:
            raise MissingBlockError(cid)
        return decode_node(block)

    top = loaded(root)
    if not top.keys:
        if top.subtrees[0] is not None:
            raise MstError("the MST root has no keys but a subtree (the tree is not trimmed)")
        return
    previous = b""
    # A stack of what comes next in key order: (key, value) pairs, and (subtree CID, layer) to expand.
    stack: list[tuple[bytes, Any]] = []

    def push(node: Node, layer: int) -> None:
        for key in node.keys:
            if key_height(key) != layer:
                raise MstError(f"the MST key {key[:100]!r} is not at the layer its hash gives")
        for index in range(len(node.keys), -1, -1):
            subtree = node.subtrees[index]
            if subtree is not None:
                if layer == 0:
                    raise MstError("an MST node of the lowest layer has a subtree")
                stack.append((subtree, layer - 1))
            if index:
                stack.append((node.keys[index - 1], node.values[index - 1]))

    push(top, key_height(top.keys[0]))
    while stack:
        first, second = stack.pop()
        if type(second) is int:
            node = loaded(first)
            if node.is_empty():
                raise MstError("an MST node below the root is empty")
            push(node, second)
            continue
        if first <= previous:
            raise MstError("the MST's keys are not in strictly increasing order")
        previous = first
        yield first, second
