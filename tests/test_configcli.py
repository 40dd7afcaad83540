import argparse
from dataclasses import dataclass
from typing import Literal

import pytest

from rnnpolicy.configcli import add_dataclass_arguments, dataclass_from_args, field_docs, in_option_names


@dataclass
class Example:
    name: str
    """What to call it."""
    rate: float = 0.5
    """How fast it goes."""
    mode: Literal["a", "b"] = "a"
    """Which way."""
    fast: bool = False
    """Go fast."""
    limit: int | None = None
    """An optional cap."""


def test_field_docstrings_become_help():
    assert field_docs(Example) == {
        "name": "What to call it.",
        "rate": "How fast it goes.",
        "mode": "Which way.",
        "fast": "Go fast.",
        "limit": "An optional cap.",
    }
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, Example)
    text = parser.format_help()
    assert "How fast it goes. (default: 0.5)" in text
    assert "--no-fast" in text


def test_parse_types_choices_and_required():
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, Example)
    args = parser.parse_args(["--name", "x", "--rate", "2", "--mode", "b", "--fast", "--limit", "3"])
    assert dataclass_from_args(Example, args) == Example("x", 2.0, "b", True, 3)
    with pytest.raises(SystemExit):
        parser.parse_args(["--name", "x", "--mode", "c"])
    with pytest.raises(SystemExit):
        parser.parse_args([])


def test_unset_options_take_the_base_values():
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, Example, unset_default=True)
    args = parser.parse_args(["--rate", "3"])
    assert dataclass_from_args(Example, args, base={"name": "n", "rate": 1.0, "limit": 7}) == Example("n", 3.0, limit=7)


def test_a_field_may_keep_another_option_name():
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, Example, options={"rate": "--speed"})
    assert "--speed SPEED How fast it goes. (default: 0.5)" in " ".join(parser.format_help().split())
    assert dataclass_from_args(Example, parser.parse_args(["--name", "x", "--speed", "2"])).rate == 2.0
    with pytest.raises(SystemExit):
        parser.parse_args(["--name", "x", "--rate", "2"])
    with pytest.raises(ValueError, match=r"options names fields that Example does not have: \['speed'\]"):
        add_dataclass_arguments(argparse.ArgumentParser(), Example, options={"speed": "--speed"})


def test_sequence_fields_repeat_and_default_to_the_dataclass_default():
    import argparse
    from dataclasses import dataclass

    from rnnpolicy.configcli import add_dataclass_arguments, dataclass_from_args

    @dataclass
    class WithList:
        wrapper: tuple[str, ...] = ()
        """Wrappers."""

    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, WithList)
    assert dataclass_from_args(WithList, parser.parse_args([])).wrapper == ()
    args = parser.parse_args(["--wrapper", "a:B", "--wrapper", "c:D:k=1"])
    assert dataclass_from_args(WithList, args).wrapper == ("a:B", "c:D:k=1")


@dataclass
class Limits:
    max_rate: float = 1.0
    """A cap."""
    intra_op_threads: int = 1
    """Threads."""
    seed: int = 0
    """One word."""

    def __post_init__(self) -> None:
        if self.max_rate <= 0:
            raise ValueError(f"max_rate must be > 0, got {self.max_rate}")


def test_errors_name_the_options_a_command_line_user_typed():
    error = ValueError("max_rate 2 needs intra_op_threads >= 1 and a seed; max_rate_hint and --max-rate stay")
    assert str(in_option_names(error, Limits, options={"intra_op_threads": "--threads"})) == (
        "--max-rate 2 needs --threads >= 1 and a seed; max_rate_hint and --max-rate stay"
    )
    args = argparse.Namespace(max_rate=-1.0, intra_op_threads=None, seed=None)
    with pytest.raises(ValueError, match="^--max-rate must be > 0, got -1.0$"):
        dataclass_from_args(Limits, args)
