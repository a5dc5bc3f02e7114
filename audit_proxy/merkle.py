"""The writer's side of the RFC 6962 Merkle log: hashing, tree heads, and proof generation.

The offline verifier (`audit_proxy.verify`) re-implements the hashing and the proof checks on
purpose, so that a mistake here cannot hide a mistake there.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash: SHA-256(0x00 ‖ data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash: SHA-256(0x01 ‖ left ‖ right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the exact bytes a leaf commits to."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


class _Proofs:
    """RFC 6962 tree heads and proofs, given the hashes of the subtrees its recursion visits."""

    size: int

    def range_hash(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for a range RFC 6962's recursion visits."""
        raise NotImplementedError

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first `size` leaves (all by default)."""
        return self.range_hash(0, self.size if size is None else self._within(size))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[size]): the audit path of one leaf in the tree of the first `size`."""
        n = self.size if size is None else self._within(size)
        if not 0 <= index < n:
            raise ValueError(f"leaf {index} is not in a tree of size {n}")
        path: list[bytes] = []
        start, end = 0, n
        while end - start > 1:
            k = _split(end - start)
            if index < start + k:
                path.append(self.range_hash(start + k, end))
                end = start + k
            else:
                path.append(self.range_hash(start, start + k))
                start += k
        return path[::-1]

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """PROOF(size1, D[size2]): the tree of size1 is a prefix of the tree of size2."""
        n = self.size if size2 is None else self._within(size2)
        if not 0 <= size1 <= n:
            raise ValueError(f"size {size1} is not within a tree of size {n}")
        if size1 in (0, n):
            return []
        path: list[bytes] = []
        start, end, m, whole = 0, n, size1, True
        while m != end - start:
            k = _split(end - start)
            if m <= k:
                path.append(self.range_hash(start + k, end))
                end = start + k
            else:
                path.append(self.range_hash(start, start + k))
                start, m, whole = start + k, m - k, False
        if not whole:
            path.append(self.range_hash(start, end))
        return path[::-1]

    def _within(self, size: int) -> int:
        if not 0 <= size <= self.size:
            raise ValueError(f"size {size} is not within a tree of size {self.size}")
        return size


class MerkleTree(_Proofs):
    """Every perfect subtree's hash over a list of leaf hashes, built once in O(n).

    Any subtree RFC 6962's recursion visits starts at a multiple of its left part's width, so
    its hash is one lookup plus O(log n) for its right edge: a proof costs O(log² n), however
    many are drawn from one tree (an export draws one per checkpoint).
    """

    def __init__(self, leaves: Sequence[bytes]) -> None:
        self.size = len(leaves)
        self._levels: list[list[bytes]] = [list(leaves)]
        while len(self._levels[-1]) > 1:
            below = self._levels[-1]
            self._levels.append(
                [node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
            )

    def range_hash(self, start: int, end: int) -> bytes:
        width = end - start
        if width <= 0:
            return EMPTY_ROOT
        if width & (width - 1) == 0 and start % width == 0:
            level = width.bit_length() - 1
            return self._levels[level][start >> level]
        k = _split(width)
        return node_hash(self.range_hash(start, start + k), self.range_hash(start + k, end))


# A tile: the perfect subtree over TILE leaves aligned to TILE. Stores keep each tile's hash
# once the log has it whole, so one proof reads n / TILE hashes and a few tiles' leaves.
TILE = 256


class TiledTree(_Proofs):
    """A tree of `size` leaves known by the hashes of its whole tiles (in order) and, on
    demand, the leaf hashes of one tile (`tile_leaves(index)`: the last may be partial)."""

    def __init__(
        self, size: int, tiles: Sequence[bytes], tile_leaves: Callable[[int], Sequence[bytes]]
    ) -> None:
        if len(tiles) != size // TILE:
            raise ValueError(
                f"a tree of size {size} has {size // TILE} whole tiles, not {len(tiles)}"
            )
        self.size = size
        self._tiles = MerkleTree(tiles)
        self._tile_leaves = tile_leaves
        self._within_tile: dict[int, MerkleTree] = {}

    def range_hash(self, start: int, end: int) -> bytes:
        width = end - start
        if width <= 0:
            return EMPTY_ROOT
        if start % TILE == 0 and width % TILE == 0 and width & (width - 1) == 0:
            return self._tiles.range_hash(start // TILE, end // TILE)
        tile = start // TILE
        if (end - 1) // TILE == tile:
            offset = tile * TILE
            return self._tile(tile).range_hash(start - offset, end - offset)
        k = _split(width)
        return node_hash(self.range_hash(start, start + k), self.range_hash(start + k, end))

    def _tile(self, index: int) -> MerkleTree:
        if index not in self._within_tile:
            self._within_tile[index] = MerkleTree(self._tile_leaves(index))
        return self._within_tile[index]


def tree_hash(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over leaf hashes (not leaf data)."""
    return MerkleTree(leaves).root()


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, D[n]) over leaf hashes: the audit path of one leaf."""
    return MerkleTree(leaves).inclusion_proof(index)


def consistency_proof(leaves: Sequence[bytes], size1: int) -> list[bytes]:
    """PROOF(size1, D[n]) over leaf hashes: the tree of size1 is a prefix of this one."""
    return MerkleTree(leaves).consistency_proof(size1)


class Frontier:
    """The right edge of a growing tree (one hash per full subtree): O(log n) appends and roots."""

    def __init__(self) -> None:
        self.size = 0
        self._stack: list[tuple[int, bytes]] = []

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash."""
        self._stack.append((1, leaf))
        self.size += 1
        while len(self._stack) >= 2 and self._stack[-1][0] == self._stack[-2][0]:
            width, right = self._stack.pop()
            _, left = self._stack.pop()
            self._stack.append((2 * width, node_hash(left, right)))

    def root(self) -> bytes:
        """The tree head over every leaf appended so far."""
        if not self._stack:
            return EMPTY_ROOT
        root = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            root = node_hash(left, root)
        return root

    def packed(self) -> bytes:
        """The subtree hashes, largest first, 32 bytes apiece (their widths follow from size)."""
        return b"".join(digest for _, digest in self._stack)

    @classmethod
    def unpacked(cls, size: int, packed: bytes, root_hex: str) -> Frontier | None:
        """The frontier `packed` saved at `size`, if it has the signed root `root_hex`; None if
        it is damaged (the caller then rebuilds it from the leaves)."""
        widths = [1 << bit for bit in reversed(range(size.bit_length())) if size >> bit & 1]
        if size < 0 or len(packed) != 32 * len(widths):
            return None
        frontier = cls()
        frontier.size = size
        frontier._stack = [(w, packed[32 * i : 32 * i + 32]) for i, w in enumerate(widths)]
        return frontier if frontier.root().hex() == root_hex else None
