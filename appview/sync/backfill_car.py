"""A repository export of any size, verified while it is read: the CAR stays on disk (mapped), its blocks are
found through a compact index, and its records come out of the MST one at a time.

``protocol.repo.verify_repository`` keeps a dict of every block (about 220 bytes per block) and the list of
every record: a repository of a million records would take 450 MB before a record is stored. Here the index
is three arrays in an open-addressing hash table (about 40 bytes per block): the key of a block is the first
8 bytes of its SHA-256 digest, and a lookup compares the whole CID with the bytes that precede the block in
the file, so a collision of keys costs a probe, never a wrong block. Every block's bytes are hashed against its
CID while the index is built (``cid-mismatch``); the commit is checked like ``verify_repository`` checks it;
the MST is walked by ``protocol.mst.walk``, which checks that the tree is canonical, as ``records`` yields. The
pages of a mapped export are let go every RELEASE_BYTES read, so that resident memory does not grow with it.

Django-free, like ``protocol``: it could move there.
"""

import hashlib
import mmap
from array import array
from collections.abc import Iterator
from dataclasses import dataclass

from protocol.car import Buffer, CarError, car_roots, read_varint
from protocol.cid import DAG_CBOR_CID_PREFIX
from protocol.crypto import PublicKey
from protocol.repo import SignedCommit, SyncError, check_export_commit, tree_records

# Every block of a repository is DAG-CBOR, named by a dag-cbor sha2-256 CIDv1.
_DIGEST_LENGTH = 32
_CID_LENGTH = len(DAG_CBOR_CID_PREFIX) + _DIGEST_LENGTH
_EMPTY = 0  # a free slot of the table; a key that is 0 is stored as 1 (keys only narrow the search)
_MAX_LOAD = 0.7
_FIRST_CAPACITY = 1024
# Bytes of a mapped export read between two releases of its pages (``CarIndex._release``); a read counts at
# least FAULT_AROUND_BYTES.
RELEASE_BYTES = 32 * 1024 * 1024
FAULT_AROUND_BYTES = 64 * 1024


def _key(digest: bytes) -> int:
    return int.from_bytes(digest[:8], "little") or 1


class CarIndex:
    """Where each block of a CAR v1 file lies, built in one pass that also checks every block against its CID.
    Raises SyncError ("car-invalid", "cid-mismatch")."""

    __slots__ = ("_car", "_ends", "_keys", "_mask", "_read", "_starts", "count", "roots")

    def __init__(self, car: Buffer) -> None:
        self._car = car
        # Bytes of blocks read since the map's pages were last let go (while indexing: where that was).
        self._read = 0
        self.count = 0
        self._allocate(_FIRST_CAPACITY)
        try:
            self.roots = car_roots(car)
            header_length, position = read_varint(car, 0)
        except CarError as exc:
            raise SyncError("car-invalid", str(exc)) from None
        position += header_length
        size = len(car)
        view = memoryview(car)
        sha256 = hashlib.sha256
        try:
            while position < size:
                length = car[position]
                if length < 0x80:
                    start = position + 1
                else:
                    length, start = read_varint(car, position)
                end = start + length
                if end > size or length < _CID_LENGTH:
                    raise SyncError("car-invalid", "a block is too short or runs past the end of the file")
                if car[start:start + len(DAG_CBOR_CID_PREFIX)] != DAG_CBOR_CID_PREFIX:
                    raise SyncError("cid-mismatch", "a block's CID is not a dag-cbor sha2-256 CID")
                data_start = start + _CID_LENGTH
                # A slice of the map, not of the view: no view of it may outlive the view (the map could not close).
                digest = car[data_start - _DIGEST_LENGTH:data_start]
                if sha256(view[data_start:end]).digest() != digest:
                    raise SyncError("cid-mismatch", "a block's bytes do not hash to its CID")
                self._insert(_key(digest), data_start, end)
                if end - self._read >= RELEASE_BYTES:
                    self._release()
                    self._read = end
                position = end
        except CarError as exc:
            raise SyncError("car-invalid", str(exc)) from None
        finally:
            view.release()
        self._release()
        self._read = 0
        if isinstance(car, mmap.mmap):
            car.madvise(mmap.MADV_RANDOM)  # from now on reads jump around the file: no read-ahead

    def _allocate(self, capacity: int) -> None:
        self._mask = capacity - 1
        self._keys = array("Q", bytes(8 * capacity))
        self._starts = array("Q", bytes(8 * capacity))
        self._ends = array("Q", bytes(8 * capacity))

    def _insert(self, key: int, start: int, end: int) -> None:
        """Adds the block whose bytes are ``car[start:end]`` (its CID, ``_CID_LENGTH`` bytes, before them); a
        second copy of a block already indexed is left out (many copies of one block in one probe chain would
        make every insert walk them all)."""
        car, keys, starts, mask = self._car, self._keys, self._starts, self._mask
        slot = key & mask
        while (found := keys[slot]) != _EMPTY:
            if found == key and car[starts[slot] - _CID_LENGTH:starts[slot]] == car[start - _CID_LENGTH:start]:
                return
            slot = (slot + 1) & mask
        if self.count + 1 > _MAX_LOAD * (mask + 1):
            self._grow()
        self._place(key, start, end)

    def _place(self, key: int, start: int, end: int) -> None:
        keys, mask = self._keys, self._mask
        slot = key & mask
        while keys[slot] != _EMPTY:
            slot = (slot + 1) & mask
        keys[slot] = key
        self._starts[slot] = start
        self._ends[slot] = end
        self.count += 1

    def _grow(self) -> None:
        keys, starts, ends = self._keys, self._starts, self._ends
        self._allocate(2 * (self._mask + 1))
        self.count = 0
        for slot, key in enumerate(keys):
            if key != _EMPTY:
                self._place(key, starts[slot], ends[slot])

    def block(self, cid: bytes) -> bytes | None:
        """The bytes of the block with this binary CID, or None when the CAR has none."""
        slot = self._slot(cid)
        if slot < 0:
            return None
        start, end = self._starts[slot], self._ends[slot]
        self._touched(end - start)
        return bytes(self._car[start:end])

    def __contains__(self, cid: bytes) -> bool:
        return self._slot(cid) >= 0

    def _slot(self, cid: bytes) -> int:
        """Where the block with this binary CID is in the table, -1 when the CAR has none."""
        if len(cid) != _CID_LENGTH:
            return -1
        car, keys, starts, mask = self._car, self._keys, self._starts, self._mask
        key = _key(cid[-_DIGEST_LENGTH:])
        slot = key & mask
        while (found := keys[slot]) != _EMPTY:
            if found == key and car[starts[slot] - _CID_LENGTH:starts[slot]] == cid:
                self._touched(0)
                return slot
            slot = (slot + 1) & mask
        return -1

    def _touched(self, size: int) -> None:
        """Counts a read of ``size`` bytes of the map. Reads jump around the file (records lie in the order of
        their CIDs, not of their keys), and each one maps in the pages around it (the kernel's fault-around,
        64 kB by default, which MADV_RANDOM does not turn off on every kernel)."""
        self._read += max(size, FAULT_AROUND_BYTES)
        if self._read >= RELEASE_BYTES:
            self._release()
            self._read = 0

    def _release(self) -> None:
        """Lets go of the pages of a mapped file read so far: they stay in the page cache (a later read of them
        costs a minor fault), but no longer count in this process's resident memory, which would otherwise
        grow to the size of the export."""
        if isinstance(self._car, mmap.mmap):
            self._car.madvise(mmap.MADV_DONTNEED)

    @property
    def bytes_used(self) -> int:
        """Memory the index takes (its arrays)."""
        return sum(part.itemsize * len(part) for part in (self._keys, self._starts, self._ends))


@dataclass(frozen=True, slots=True)
class StreamedRepository:
    """A repository export whose blocks and commit are verified; its records are verified as they are read."""

    did: str
    commit: SignedCommit
    index: CarIndex

    @property
    def rev(self) -> str:
        return self.commit.rev or ""

    def records(self) -> Iterator[tuple[str, bytes]]:
        """("collection/rkey", record CID) in key order, while checking that the MST is canonical and every
        record block present. Raises SyncError ("mst-invalid", "missing-block") at the first fault: a caller
        keeps nothing of a repository until the iteration has ended."""
        yield from tree_records(self.commit.data, self.index.block)


def open_repository(car: Buffer, did: str, key: PublicKey | None) -> StreamedRepository:
    """Indexes the export (checking every block's CID) and checks its commit: the CAR's root, naming ``did``,
    with a TID rev and signed by ``key`` (None skips the signature only). Raises SyncError."""
    index = CarIndex(car)
    if not index.roots:
        raise SyncError("car-invalid", "the CAR names no root")
    commit = check_export_commit(index.block(index.roots[0]), did, key)
    return StreamedRepository(did=did, commit=commit, index=index)
