from inference import (
    CURSOR,
    FIM_TEMPLATES,
    Snippet,
    build_chat_completion_messages,
    build_fim_prompt,
)
from inference.prompts import comment_style

SNIPPET = Snippet(
    path="lib/util.py", start_line=3, end_line=4, text="def helper():\n    return 1\n"
)


def test_fim_without_snippets_is_the_bare_template() -> None:
    template = FIM_TEMPLATES["codellama"]
    assert build_fim_prompt(template, "a", "b", filename="x.py", snippets=[]) == template.render(
        "a", "b"
    )


def test_snippets_as_comments_before_the_prefix() -> None:
    prompt = build_fim_prompt(
        FIM_TEMPLATES["deepseek-coder"], "x = ", "\n", filename="app.py", snippets=[SNIPPET]
    )
    expected_prefix = (
        "# Path: lib/util.py (lines 3-4)\n# def helper():\n#     return 1\n# Path: app.py\nx = "
    )
    assert prompt == FIM_TEMPLATES["deepseek-coder"].render(expected_prefix, "\n")


def test_comment_style_follows_the_language() -> None:
    prompt = build_fim_prompt(
        FIM_TEMPLATES["codellama"], "int x", ";", filename="src/main.c", snippets=[SNIPPET]
    )
    assert "// Path: lib/util.py (lines 3-4)\n// def helper():\n" in prompt
    assert comment_style("index.html") == ("<!-- ", " -->")
    assert comment_style("Makefile") == ("# ", "")


def test_file_separator_form_for_qwen() -> None:
    prompt = build_fim_prompt(
        FIM_TEMPLATES["qwen2.5-coder"], "x = ", "\n", filename="app.py", snippets=[SNIPPET]
    )
    assert prompt == (
        "<|file_sep|>lib/util.py\ndef helper():\n    return 1\n"
        "<|file_sep|>app.py\n<|fim_prefix|>x = <|fim_suffix|>\n<|fim_middle|>"
    )


def test_stable_content_first_so_keystrokes_share_a_prefix() -> None:
    template = FIM_TEMPLATES["starcoder"]
    one = build_fim_prompt(template, "def f(", ")\n", filename="a.py", snippets=[SNIPPET])
    two = build_fim_prompt(template, "def f(x", ")\n", filename="a.py", snippets=[SNIPPET])
    common = one[: one.index("def f(") + len("def f(")]
    assert two.startswith(common)
    assert common.index("helper") < common.index("def f(")


def test_chat_messages() -> None:
    messages = build_chat_completion_messages(
        "def f():\n    ", "\nprint(f())\n", filename="a.py", language="python", snippets=[SNIPPET]
    )
    assert [m.role for m in messages] == ["system", "user"]
    system, user = messages[0].content, messages[1].content
    assert "ONLY the code" in system and "fences" in system and CURSOR in system
    assert f"def f():\n    {CURSOR}\nprint(f())\n" in user
    assert "File: a.py (python)" in user
    assert "lib/util.py" in user and user.index("lib/util.py") < user.index(CURSOR)
