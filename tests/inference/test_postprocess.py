import pytest

from inference import (
    PostContext,
    balance_brackets,
    cut_repeated_lines,
    drop_blank,
    postprocess,
    reached_block_boundary,
    single_line_when_mid_line,
    stop_at_block_end,
    strip_code_fences,
    strip_echoed_prefix,
    trim_suffix_overlap,
    trim_trailing_whitespace,
)


def ctx(document: str, language: str = "python") -> PostContext:
    """A context from a document with `|` at the cursor."""
    prefix, suffix = document.split("|", 1)
    return PostContext.from_texts(prefix, suffix, language)


def test_context_properties() -> None:
    c = ctx("def f():\n    ret|urn\nx")
    assert c.line_prefix == "    ret"
    assert c.line_suffix == "urn"
    assert c.indentation == "    "
    assert c.mid_line


# strip_code_fences


def test_fences_are_stripped() -> None:
    c = ctx("x = |\n")
    assert strip_code_fences("```python\nfoo()\n```\nExplanation.", c) == "foo()"
    assert strip_code_fences("```\nfoo()", c) == "foo()"
    assert strip_code_fences("foo()", c) == "foo()"
    assert strip_code_fences("```py", c) == ""


def test_fences_are_kept_in_markdown() -> None:
    assert (
        strip_code_fences("```python\nx\n```", ctx("# Doc\n|", "markdown")) == "```python\nx\n```"
    )


# strip_echoed_prefix


def test_echo_of_the_current_line_is_removed() -> None:
    c = ctx("def f(a, b):\n    return a|\n")
    assert strip_echoed_prefix("    return a + b", c) == " + b"
    assert strip_echoed_prefix("return a + b", c) == " + b"
    assert strip_echoed_prefix(" + b", c) == " + b"


def test_echo_of_previous_lines_is_removed() -> None:
    c = ctx("def add(a, b):\n    |")
    assert strip_echoed_prefix("def add(a, b):\n    return a + b", c) == "return a + b"


def test_cursor_marker_and_doubled_indentation_are_removed() -> None:
    c = ctx("def f():\n    x = 1\n    |")
    assert strip_echoed_prefix("    return x<CURSOR>", c) == "return x"
    opened = ctx("def f():\n    |")
    assert strip_echoed_prefix("    return 1", opened) == "    return 1"


# single_line_when_mid_line


def test_mid_line_completion_is_one_line() -> None:
    assert single_line_when_mid_line("a, b\nmore", ctx("foo(|)")) == "a, b"
    assert single_line_when_mid_line("a\nb", ctx("x = |\n")) == "a\nb"


# cut_repeated_lines


def test_line_repeated_three_times_is_cut() -> None:
    c = ctx("|")
    assert cut_repeated_lines("a = 1\nx += 1\nx += 1\nx += 1\nx += 1", c) == "a = 1\nx += 1"
    assert cut_repeated_lines("x += 1\nx += 1\ny", c) == "x += 1\nx += 1\ny"


def test_block_loop_is_cut() -> None:
    block = "if a:\n    b()\n"
    assert cut_repeated_lines("start\n" + block * 4, ctx("|")) == "start\nif a:\n    b()"


def test_unfinished_line_stuck_in_a_loop_is_cut() -> None:
    assert cut_repeated_lines("x = a = a = a = a = a = a = a = a", ctx("|")) == "x = a"


def test_closing_braces_at_different_indents_are_not_repetition() -> None:
    text = "      }\n    }\n  }\n}"
    assert cut_repeated_lines(text, ctx("|", "javascript")) == text


# stop_at_block_end


def test_dedent_below_the_cursor_block_stops() -> None:
    c = ctx("def f():\n    |")
    assert stop_at_block_end("x = 1\n    return x\nprint(f())", c) == "x = 1\n    return x"


def test_new_statement_after_a_complete_block_stops() -> None:
    c = ctx("def f():|")
    text = "\n    return 1\n\ndef g():\n    pass"
    assert stop_at_block_end(text, c) == "\n    return 1\n"


def test_statements_of_the_same_block_go_on() -> None:
    c = ctx("def f():\n    |")
    assert (
        stop_at_block_end("a = 1\n    b = 2\n    return a", c) == "a = 1\n    b = 2\n    return a"
    )


def test_else_and_catch_continue_the_statement() -> None:
    c = ctx("def f(x):\n    |")
    text = "if x:\n        a()\n    else:\n        b()\n    return 1"
    assert stop_at_block_end(text, c) == "if x:\n        a()\n    else:\n        b()"
    js = ctx("  |", "javascript")
    assert stop_at_block_end("try {\n    a();\n  } catch (e) {\n    b();\n  }\n  c();", js) == (
        "try {\n    a();\n  } catch (e) {\n    b();\n  }"
    )


def test_block_closer_is_kept_and_ends_the_completion() -> None:
    c = ctx("function f() {|", "javascript")
    text = "\n  return 1;\n}\n\nfunction g() {}"
    assert stop_at_block_end(text, c) == "\n  return 1;\n}"


def test_block_closer_the_suffix_already_has_is_dropped() -> None:
    c = ctx("function f() {\n  |\n}\n", "javascript")
    assert stop_at_block_end("return 1;\n}", c) == "return 1;"


def test_cursor_at_column_zero_uses_the_completion_indent() -> None:
    c = ctx("def f():\n|")
    assert stop_at_block_end("    return 1\nx = 2", c) == "    return 1"


# trim_suffix_overlap


def test_trailing_lines_that_the_suffix_repeats_are_dropped() -> None:
    c = ctx("def f(x):|\n    return x\n")
    assert trim_suffix_overlap("\n    x += 1\n    return x", c) == "\n    x += 1"


def test_completion_that_only_repeats_the_suffix_becomes_empty() -> None:
    c = ctx("def f(x):\n    |\n    return x\n")
    assert trim_suffix_overlap("return x", c) == ""


def test_rest_of_line_overlap_is_trimmed() -> None:
    c = ctx("x = a if c| else b\n")
    assert trim_suffix_overlap(" > 0 else b", c) == " > 0"


def test_bracket_only_rest_of_line_is_left_to_balance_brackets() -> None:
    c = ctx("g(|)\n")
    assert trim_suffix_overlap("f(x)", c) == "f(x)"


# balance_brackets


def test_closer_the_suffix_provides_is_cut() -> None:
    c = ctx("foo(|)\n")
    assert balance_brackets("a, b)", c) == "a, b"


def test_nested_call_is_kept() -> None:
    c = ctx("g(|)\n")
    assert balance_brackets("f(x)", c) == "f(x)"


def test_closer_that_the_suffix_does_not_provide_is_kept() -> None:
    c = ctx("print(foo(|\n")
    assert balance_brackets("a))", c) == "a))"
    assert balance_brackets("a)))", c) == "a))"


def test_mismatched_closer_is_cut() -> None:
    c = ctx("x = [|\n")
    assert balance_brackets("1, 2)", c) == "1, 2"


def test_brackets_in_strings_and_comments_are_ignored() -> None:
    c = ctx("print(|)\n")
    assert balance_brackets("')' # )", c) == "')' # )"
    js = ctx("f(|);\n", "javascript")
    assert balance_brackets('"(" /* ) */', js) == '"(" /* ) */'


def test_block_closing_brace_with_suffix_braces() -> None:
    prefix = "class A {\n  void f() {\n    |"
    needed = ctx(prefix + "\n\n  void g() {}\n}\n", "java")
    assert balance_brackets("return;\n  }", needed) == "return;\n  }"
    already = ctx(prefix + "\n  }\n}\n", "java")
    assert balance_brackets("return;\n  }", already) == "return;"


# trim_trailing_whitespace, drop_blank


def test_trailing_whitespace() -> None:
    assert trim_trailing_whitespace("x = 1\n\n", ctx("|")) == "x = 1"
    assert trim_trailing_whitespace("a + ", ctx("x = |b\n")) == "a + "


def test_drop_blank() -> None:
    assert drop_blank("  \n", ctx("|")) is None
    assert drop_blank("x", ctx("|")) == "x"


# the chain


def test_chain_on_a_chat_answer() -> None:
    c = ctx("def add(a, b):\n    |\n\nprint(add(1, 2))\n")
    answer = "```python\ndef add(a, b):\n    return a + b\n```"
    assert postprocess(answer, c) == "return a + b"


def test_chain_drops_an_empty_candidate() -> None:
    c = ctx("def f(x):\n    |\n    return x\n")
    assert postprocess("return x\n", c) is None


def test_chain_custom_filters() -> None:
    assert postprocess("  ", ctx("|"), filters=[]) == "  "


# reached_block_boundary


def test_boundary_mid_line_at_newline() -> None:
    c = ctx("foo(|)\n")
    assert not reached_block_boundary("a, b", c)
    assert reached_block_boundary("a, b\n", c)


def test_boundary_after_dedent_starts() -> None:
    c = ctx("def f():\n    |")
    assert not reached_block_boundary("x = 1\n    return x\n", c)
    assert not reached_block_boundary("x = 1\n    return x\n  ", c)
    assert reached_block_boundary("x = 1\n    return x\np", c)


def test_boundary_after_closing_line_completes() -> None:
    c = ctx("function f() {|", "javascript")
    assert not reached_block_boundary("\n  return 1;\n}", c)
    assert reached_block_boundary("\n  return 1;\n}\n", c)


def test_boundary_on_repetition() -> None:
    assert reached_block_boundary("x()\nx()\nx()\n", ctx("|"))


@pytest.mark.parametrize("text", ["", "a", "a\n", "\n    b"])
def test_no_boundary_early(text: str) -> None:
    assert not reached_block_boundary(text, ctx("def f():|"))
