"""RFC 6962 hashing and proofs, writer and verifier, against the published CT test vectors.

The vectors are those of Google's certificate-transparency / transparency-dev/merkle tests
(`proof/verify_test.go`): eight leaves, the roots of the trees of size 1..8, and known proofs.
"""

from __future__ import annotations

import pytest

from audit_proxy import merkle, verify

LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
ROOTS = [
    bytes.fromhex(h)
    for h in (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]
EMPTY_ROOT = bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def h(*hexes: str) -> list[bytes]:
    return [bytes.fromhex(x) for x in hexes]


# (leaf index, tree size, proof); the vectors' indices are 1-based, these are 0-based.
INCLUSION = [
    (0, 1, []),
    (
        0,
        8,
        h(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        5,
        8,
        h(
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (2, 3, h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")),
    (
        1,
        5,
        h(
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
]
CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        h(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        6,
        8,
        h(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (
        2,
        5,
        h(
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
    (
        6,
        7,
        h(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
]
HASHES = [merkle.leaf_hash(leaf) for leaf in LEAVES]


def test_hashing_is_rfc6962() -> None:
    assert merkle.tree_hash([]) == EMPTY_ROOT == verify.root_of([])
    assert merkle.leaf_hash(b"") == ROOTS[0] == verify.leaf_hash(b"")
    assert merkle.node_hash(b"a" * 32, b"b" * 32) == verify.node_hash(b"a" * 32, b"b" * 32)


@pytest.mark.parametrize("size", range(1, 9))
def test_tree_heads(size: int) -> None:
    assert merkle.tree_hash(HASHES[:size]) == ROOTS[size - 1]
    assert verify.root_of(HASHES[:size]) == ROOTS[size - 1]
    frontier = merkle.Frontier()
    for leaf in HASHES[:size]:
        frontier.append(leaf)
    assert frontier.root() == ROOTS[size - 1]


def test_frontier_matches_for_larger_trees() -> None:
    leaves = [merkle.leaf_hash(str(i).encode()) for i in range(70)]
    frontier = merkle.Frontier()
    for n, leaf in enumerate(leaves, 1):
        frontier.append(leaf)
        assert frontier.root() == merkle.tree_hash(leaves[:n]) == verify.root_of(leaves[:n])


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_inclusion_vectors(index: int, size: int, proof: list[bytes]) -> None:
    assert merkle.inclusion_proof(HASHES[:size], index) == proof
    root = ROOTS[size - 1]
    assert verify.verify_inclusion(index, size, HASHES[index], proof, root)
    bad = [
        (index - 1, size, HASHES[index], proof, root),
        (index + 1, size, HASHES[index], proof, root),
        (index ^ 2, size, HASHES[index], proof, root),
        (index, size * 2, HASHES[index], proof, root),
        (index, size // 2, HASHES[index], proof, root),
        (index, size, b"WrongLeaf", proof, root),
        (index, size, HASHES[index], proof, EMPTY_ROOT),
        (index, size, HASHES[index], proof, SOME_HASH),
        (index, size, HASHES[index], [*proof, b""], root),
        (index, size, HASHES[index], [*proof, root], root),
        (index, size, HASHES[index], [b"", *proof], root),
        (index, size, HASHES[index], [root, *proof], root),
    ]
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([flipped[i][0] ^ 8]) + flipped[i][1:]
        bad.append((index, size, HASHES[index], flipped, root))
    if proof:
        bad.append((index, size, HASHES[index], proof[:-1], root))
    if len(proof) > 1:
        bad.append((index, size, HASHES[index], [proof[0], SOME_HASH, *proof[1:]], root))
    for probe in bad:
        assert not verify.verify_inclusion(*probe), probe


@pytest.mark.parametrize(("size1", "size2", "proof"), CONSISTENCY)
def test_consistency_vectors(size1: int, size2: int, proof: list[bytes]) -> None:
    assert merkle.consistency_proof(HASHES[:size2], size1) == proof
    r1, r2 = ROOTS[size1 - 1], ROOTS[size2 - 1]
    assert verify.verify_consistency(size1, size2, proof, r1, r2)
    if not proof:
        return
    bad = [
        (size1 - 1, size2, proof, r1, r2),
        (size1 + 1, size2, proof, r1, r2),
        (size1 ^ 2, size2, proof, r1, r2),
        (size1, size2 * 2, proof, r1, r2),
        (size1, size2 // 2, proof, r1, r2),
        (size1, size2, proof, b"WrongRoot", r2),
        (size1, size2, proof, r1, b"WrongRoot"),
        (size1, size2, proof, r2, r1),
        (size1, size2, [], r1, r2),
        (size1, size2, [*proof, b""], r1, r2),
        (size1, size2, [*proof, r1], r1, r2),
        (size1, size2, [*proof, r2], r1, r2),
        (size1, size2, [b"", *proof], r1, r2),
        (size1, size2, [r1, *proof], r1, r2),
        (size1, size2, [r2, *proof], r1, r2),
        (size1, size2, [proof[0], *proof], r1, r2),
        (size1, size2, proof[:-1], r1, r2),
    ]
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([flipped[i][0] ^ 16]) + flipped[i][1:]
        bad.append((size1, size2, flipped, r1, r2))
    for probe in bad:
        assert not verify.verify_consistency(*probe), probe


def test_consistency_edge_cases() -> None:
    r1, r2 = b"don't care 1", b"don't care 2"
    assert verify.verify_consistency(0, 0, [], r1, r1)
    assert verify.verify_consistency(0, 1, [], r1, r2)
    assert verify.verify_consistency(1, 1, [], r2, r2)
    assert not verify.verify_consistency(0, 0, [], r1, r2)
    assert not verify.verify_consistency(1, 1, [], r1, r2)
    assert not verify.verify_consistency(1, 0, [], r1, r2)
    assert not verify.verify_consistency(2, 1, [], r1, r2)
    assert not verify.verify_consistency(1, 2, [], r1, r2)
    assert not verify.verify_consistency(0, 1, [EMPTY_ROOT], EMPTY_ROOT, EMPTY_ROOT)
    assert not verify.verify_consistency(1, 1, [EMPTY_ROOT], EMPTY_ROOT, EMPTY_ROOT)


def test_generated_proofs_verify_for_every_pair() -> None:
    leaves = [merkle.leaf_hash(str(i).encode()) for i in range(19)]
    for size in range(1, len(leaves) + 1):
        root = merkle.tree_hash(leaves[:size])
        for index in range(size):
            proof = merkle.inclusion_proof(leaves[:size], index)
            assert verify.verify_inclusion(index, size, leaves[index], proof, root)
        for size1 in range(size + 1):
            proof = merkle.consistency_proof(leaves[:size], size1)
            root1 = merkle.tree_hash(leaves[:size1])
            assert verify.verify_consistency(size1, size, proof, root1, root)


def test_one_tree_answers_for_every_prefix_as_a_tree_of_that_size_would() -> None:
    leaves = [merkle.leaf_hash(str(i).encode()) for i in range(70)]
    tree = merkle.MerkleTree(leaves)
    for size in range(71):
        assert tree.root(size) == verify.root_of(leaves[:size])
        for size1 in range(0, size + 1, 3):
            proof = tree.consistency_proof(size1, size)
            assert proof == merkle.consistency_proof(leaves[:size], size1)
            assert verify.verify_consistency(size1, size, proof, tree.root(size1), tree.root(size))
        for index in range(0, size, 5):
            assert tree.inclusion_proof(index, size) == merkle.inclusion_proof(leaves[:size], index)
    with pytest.raises(ValueError, match="not within a tree of size 70"):
        tree.consistency_proof(3, 71)


def test_the_verifiers_running_root_matches_its_tree_heads() -> None:
    leaves = [merkle.leaf_hash(str(i).encode()) for i in range(70)]
    running = verify.RunningRoot()
    assert running.root() == EMPTY_ROOT
    for size, leaf in enumerate(leaves, 1):
        running.add(leaf)
        assert running.root() == verify.root_of(leaves[:size]) == merkle.tree_hash(leaves[:size])


def test_a_packed_frontier_unpacks_only_with_its_signed_root() -> None:
    leaves = [merkle.leaf_hash(str(i).encode()) for i in range(70)]
    for size in (0, 1, 2, 5, 64, 70):
        frontier = merkle.Frontier()
        for leaf in leaves[:size]:
            frontier.append(leaf)
        root = frontier.root().hex()
        restored = merkle.Frontier.unpacked(size, frontier.packed(), root)
        assert restored is not None and restored.size == size and restored.root().hex() == root
        for leaf in leaves[size:]:
            restored.append(leaf)
        assert restored.root() == merkle.tree_hash(leaves)
    frontier = merkle.Frontier()
    for leaf in leaves[:5]:
        frontier.append(leaf)
    packed, root = frontier.packed(), frontier.root().hex()
    assert merkle.Frontier.unpacked(5, packed[:-1] + b"x", root) is None  # damaged
    root_of_six = merkle.tree_hash(leaves[:6]).hex()
    assert merkle.Frontier.unpacked(6, packed, root_of_six) is None  # saved at another size
    assert merkle.Frontier.unpacked(5, packed, "00" * 32) is None  # not the signed root


@pytest.mark.parametrize("size", [1, 255, 256, 257, 512, 700, 1024, 1100])
def test_a_tiled_tree_gives_the_proofs_of_the_whole_tree(size: int) -> None:
    leaves = [merkle.leaf_hash(str(i).encode()) for i in range(size)]
    whole = merkle.MerkleTree(leaves)
    tile = merkle.TILE
    tiles = [whole.range_hash(i * tile, (i + 1) * tile) for i in range(size // tile)]
    read: list[int] = []

    def tile_leaves(index: int) -> list[bytes]:
        read.append(index)
        return leaves[index * tile : min(size, (index + 1) * tile)]

    tiled = merkle.TiledTree(size, tiles, tile_leaves)
    assert tiled.root() == whole.root()
    for index in sorted({0, 1, size // 2, size - 1} & set(range(size))):
        assert tiled.inclusion_proof(index) == whole.inclusion_proof(index)
    for size1 in sorted({0, 1, 255, 256, 300, size - 1, size} & set(range(size + 1))):
        assert tiled.consistency_proof(size1) == whole.consistency_proof(size1)
    # Only the tiles the proofs go through are read leaf by leaf.
    assert len(set(read)) <= 5
    with pytest.raises(ValueError, match="whole tiles"):
        merkle.TiledTree(size + tile, tiles, tile_leaves)
