from lsp_server.typing_cache import TypingCache

URI = "file:///t.py"


def test_typing_into_a_shown_suggestion_returns_the_rest() -> None:
    cache = TypingCache()
    cache.remember(URI, "x = ", "\n", "foo(bar)")
    assert cache.lookup(URI, "x = fo", "\n") == "o(bar)"
    assert cache.lookup(URI, "x = ", "\n") == "foo(bar)"


def test_typing_something_else_misses() -> None:
    cache = TypingCache()
    cache.remember(URI, "x = ", "\n", "foo(bar)")
    assert cache.lookup(URI, "x = fa", "\n") is None
    assert cache.lookup(URI, "x = fo", "changed suffix") is None
    assert cache.lookup("file:///other.py", "x = fo", "\n") is None


def test_typing_the_whole_suggestion_leaves_nothing_to_offer() -> None:
    cache = TypingCache()
    cache.remember(URI, "x = ", "\n", "foo(bar)")
    assert cache.lookup(URI, "x = foo(bar)", "\n") is None


def test_the_newest_matching_suggestion_wins_and_forget_clears() -> None:
    cache = TypingCache(per_document=2)
    cache.remember(URI, "a", "", "bc")
    cache.remember(URI, "a", "", "bd")
    assert cache.lookup(URI, "ab", "") == "d"
    cache.remember(URI, "z", "", "y")
    assert cache.lookup(URI, "ab", "") == "d"
    cache.remember(URI, "q", "", "r")
    assert cache.lookup(URI, "ab", "") is None
    cache.forget(URI)
    assert cache.lookup(URI, "q", "") is None
