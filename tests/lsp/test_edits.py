from lsprotocol import types

from lsp_server.edits import LineRegion, apply_edits, minimal_edits

TEXT = "def f(x):\n    y = x + 1\n    return y\n\n\ndef g():\n    pass\n"
LINES = TEXT.splitlines(keepends=True)


def test_only_changed_lines_are_edited() -> None:
    edits = minimal_edits(LINES, LineRegion(0, 3), "def f(x):\n    y = x + 2\n    return y\n")
    assert len(edits) == 1
    assert edits[0].range.start.line == 1 and edits[0].range.end.line == 2
    assert apply_edits(TEXT, edits) == TEXT.replace("x + 1", "x + 2")


def test_identical_replacement_gives_no_edit() -> None:
    assert minimal_edits(LINES, LineRegion(5, 7), "def g():\n    pass") == []


def test_insertions_and_deletions_keep_the_rest() -> None:
    edits = minimal_edits(LINES, LineRegion(0, 3), 'def f(x):\n    """Doc."""\n    return x + 1\n')
    result = apply_edits(TEXT, edits)
    assert result.startswith('def f(x):\n    """Doc."""\n    return x + 1\n\n\ndef g():')


def test_last_line_without_newline() -> None:
    text = "a = 1\nb = 2"
    lines = text.splitlines(keepends=True)
    edits = minimal_edits(lines, LineRegion(1, 2), "b = 3")
    assert apply_edits(text, edits) == "a = 1\nb = 3"


def test_overlapping_edits_are_rejected() -> None:
    def edit(a: int, b: int) -> types.TextEdit:
        return types.TextEdit(
            range=types.Range(
                start=types.Position(line=a, character=0), end=types.Position(line=b, character=0)
            ),
            new_text="",
        )

    try:
        apply_edits(TEXT, [edit(0, 2), edit(1, 3)])
    except ValueError as error:
        assert "overlap" in str(error)
    else:
        raise AssertionError("overlapping edits must be refused")
