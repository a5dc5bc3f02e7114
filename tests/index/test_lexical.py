"""Code-aware tokens and BM25 (SQLite FTS5) over them."""

from __future__ import annotations

from pathlib import Path

from index.chunker import Chunk
from index.lexical import document_tokens, fts_query
from index.store import FileRecord, IndexStore
from index.tokens import split_identifier, tokenize


def test_identifiers_split_at_camel_and_snake_case() -> None:
    assert split_identifier("parseHTTPResponse_v2") == ["parse", "http", "response", "v2"]
    assert split_identifier("get_encoding_from_headers") == ["get", "encoding", "from", "headers"]
    assert tokenize("x = fooBar(base_url)") == [
        "x",
        "foobar",
        "foo",
        "bar",
        "base_url",
        "base",
        "url",
    ]


def test_single_word_identifiers_are_not_repeated() -> None:
    assert tokenize("return value") == ["return", "value"]
    assert tokenize("URL") == ["url"]


def test_fts_query_quotes_distinct_safe_terms() -> None:
    assert fts_query(["foo", "bar", "foo", "a-b", 'x"']) == '"foo" OR "bar"'
    assert fts_query([]) == ""


def _put(store: IndexStore, path: str, texts: list[str]) -> None:
    chunks = [Chunk(n, n, "code", "", text) for n, text in enumerate(texts)]
    record = FileRecord(0, path, "0" * 64, 1, 1, "python", chunks, [])
    store.put_file(path, record, [document_tokens(path, c.text) for c in chunks])


def test_bm25_ranks_rare_shared_terms_first_and_forgets_removed_files(tmp_path: Path) -> None:
    store = IndexStore(tmp_path / "db", ["/r"])
    store.begin()
    _put(store, "a.py", ["def send_request(session, url): return session.get(url)"])
    _put(store, "b.py", ["def parse_header(value): return value.split(';')"])
    _put(store, "c.py", ["class RequestSession: pass"])
    store.commit()

    def paths(query: str, exclude: str | None = None) -> list[str]:
        return [ref.path for ref, _ in store.lexical(tokenize(query), 3, exclude)]

    assert paths("parseHeader")[0] == "b.py"
    assert set(paths("request session")) == {"a.py", "c.py"}
    assert paths("request session", exclude="a.py") == ["c.py"]
    store.begin()
    assert store.delete_file("b.py")
    _put(store, "a.py", ["def unrelated(): pass"])
    store.commit()
    assert paths("parse_header") == []
    assert paths("send request") == ["c.py"]
    assert store.counts() == (2, 2, 0)
