"""Chunks fit the bundled MiniLM encoder's 256 word-pieces when the chunker is given its counter."""

from __future__ import annotations

import pickle
from functools import cache

from index.chunker import ChunkLimits, chunk_file
from index.token_budget import EstimatedCounter, WordPieceCounter


@cache
def _minilm() -> WordPieceCounter:
    return WordPieceCounter.for_minilm()


def _tokens(text: str) -> int:
    counter = _minilm()
    return sum(counter(text.splitlines())) + counter.special_tokens


def _long_function() -> str:
    body = "".join(
        f"    result_{n} = transform_payload(request.headers['X-Trace-{n}'], retries={n})\n"
        for n in range(40)
    )
    return f"def handle_request(request, session, *, timeout=30):\n{body}    return result_0\n"


def test_line_counts_add_up_to_the_whole_text() -> None:
    counter = _minilm()
    text = _long_function()
    whole = len(counter._load().encode(text).ids)
    assert whole == _tokens(text) > 256


def test_every_chunk_fits_and_split_pieces_keep_the_signature() -> None:
    source = _long_function()
    plain = chunk_file("m.py", source, ChunkLimits(token_counter=None))
    assert max(_tokens(c.text) for c in plain.chunks) > 256  # what the limit has to fix
    estimated = chunk_file("m.py", source)  # the default: the cheap estimate
    assert max(_tokens(c.text) for c in estimated.chunks) <= 256
    fitted = chunk_file("m.py", source, ChunkLimits(token_counter=_minilm()))
    pieces = [c for c in fitted.chunks if c.name == "handle_request"]
    assert len(pieces) >= 2
    assert all(_tokens(c.text) <= 256 for c in fitted.chunks)
    assert all(p.text.startswith("def handle_request(request") for p in pieces)
    covered = {n for c in fitted.chunks for n in range(c.start_line, c.end_line + 1)}
    assert covered == set(range(len(source.splitlines())))
    handle = next(s for s in fitted.symbols if s.name == "handle_request")
    assert fitted.chunks[handle.chunk].start_line == 0


def test_a_single_line_over_the_limit_is_cut_into_pieces() -> None:
    words = " ".join(f"'value_{n}'," for n in range(400))
    source = f"TABLE = [{words}]\n\ndef after():\n    return TABLE\n"
    for path in ("m.py", "notes.txt"):
        fitted = chunk_file(path, source, ChunkLimits(token_counter=_minilm()))
        assert all(_tokens(c.text) <= 256 for c in fitted.chunks)
        first_line = [c for c in fitted.chunks if c.start_line == c.end_line == 0]
        assert len(first_line) >= 2
        assert "".join(c.text for c in first_line) == source.splitlines()[0]


def test_counters_survive_pickling_into_worker_processes() -> None:
    copy = pickle.loads(pickle.dumps(_minilm()))  # noqa: S301 (our own bytes, as a worker gets)
    assert copy(["def f(x): return x"]) == _minilm()(["def f(x): return x"])
    assert copy.special_tokens == 2
    estimate = pickle.loads(pickle.dumps(EstimatedCounter()))  # noqa: S301
    assert estimate(["get_encoding_from_headers(r)"]) >= _minilm()(["get_encoding_from_headers(r)"])


def test_whole_file_estimate_matches_the_per_line_estimate_exactly() -> None:
    import random
    import sysconfig
    from pathlib import Path

    from index.token_budget import _PIECE, _PUNCTUATION

    counter = EstimatedCounter()

    def by_regex(lines: list[str]) -> list[int]:
        return [len(_PUNCTUATION.findall(x)) + len(_PIECE.findall(x)) for x in lines]

    stdlib = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:40]
    rng = random.Random(3)
    samples = [p.read_text(encoding="utf-8", errors="replace").splitlines() for p in stdlib]
    alphabet = "ab_Z9 \t.é\u00a0\u2003\u3000(){}x\r\x0c"
    samples += [
        ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(64)]
        for _ in range(50)
    ]
    for lines in samples:
        if len(lines) >= 32:  # the whole-file path
            assert counter(lines) == by_regex(lines)
