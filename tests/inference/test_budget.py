import pytest

from inference import CharRatioCounter, fit_windows
from inference.budget import calibrate_counter

ONE_CHAR = CharRatioCounter(1.0)


def test_char_ratio_counter_rounds_up() -> None:
    assert CharRatioCounter(4.0).count("abcde") == 2
    assert CharRatioCounter().count("") == 0


def test_everything_fits_untouched() -> None:
    assert fit_windows("abc\n", "def\n", budget_tokens=100, counter=ONE_CHAR) == ("abc\n", "def\n")


def test_keeps_lines_nearest_the_cursor() -> None:
    prefix = "line1\nline2\nline3\ncur"
    suffix = "rest\nnext1\nnext2\n"
    new_prefix, new_suffix = fit_windows(
        prefix, suffix, budget_tokens=20, suffix_share=0.5, counter=ONE_CHAR
    )
    assert new_prefix == "line3\ncur"
    assert new_suffix == "rest\nnext1\n"


def test_unused_share_goes_to_the_other_side() -> None:
    prefix = "a\n" * 50
    new_prefix, new_suffix = fit_windows(prefix, "x", budget_tokens=41, counter=ONE_CHAR)
    assert new_suffix == "x"
    assert new_prefix == "a\n" * 20


def test_cursor_line_over_budget_is_cut_by_characters() -> None:
    new_prefix, new_suffix = fit_windows("0123456789", "", budget_tokens=4, counter=ONE_CHAR)
    assert new_prefix == "6789" and new_suffix == ""


def test_results_stay_within_budget() -> None:
    prefix = "".join(f"line number {i}\n" for i in range(200))
    suffix = "".join(f"after {i}\n" for i in range(200))
    counter = CharRatioCounter(3.5)
    new_prefix, new_suffix = fit_windows(prefix, suffix, budget_tokens=300, counter=counter)
    assert counter.count(new_prefix) + counter.count(new_suffix) <= 300
    assert prefix.endswith(new_prefix) and suffix.startswith(new_suffix)
    assert new_prefix.startswith("line number") and new_suffix.endswith("\n")


class FakeClient:
    def __init__(self, tokens: list[int] | None) -> None:
        self.tokens = tokens

    async def tokenize(self, model: str, text: str) -> list[int] | None:
        return self.tokens


async def test_calibrate_from_the_server() -> None:
    counter = await calibrate_counter(FakeClient([1, 2, 3, 4]), "m", "x" * 20)  # type: ignore[arg-type]
    assert isinstance(counter, CharRatioCounter)
    assert counter.chars_per_token == pytest.approx(5.0)


async def test_calibrate_falls_back_without_tokenizer() -> None:
    counter = await calibrate_counter(FakeClient(None), "m", "sample")  # type: ignore[arg-type]
    assert isinstance(counter, CharRatioCounter) and counter.chars_per_token == 3.5
