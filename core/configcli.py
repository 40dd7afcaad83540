"""Command-line options generated from typed dataclasses, with each field's docstring as its help.

A field documented by the string literal right below it::

    @dataclass
    class Config:
        seed: int = 1
        \"\"\"Random seed.\"\"\"

becomes ``--seed SEED  Random seed. (default: 1)``, so the help never drifts from the code.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import re
import textwrap
import types
import typing
from typing import Any, Literal, TypeVar, get_args, get_origin

T = TypeVar("T")


def field_docs(cls: type) -> dict[str, str]:
    """Map each field of dataclass ``cls`` (and its bases) to the docstring below it."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for node, following in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_dataclass_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    defaults: dict[str, Any] | None = None,
    skip: tuple[str, ...] = (),
    unset_default: bool = False,
    options: dict[str, str] | None = None,
) -> None:
    """Add one ``--option`` per field of ``cls``.

    ``defaults`` overrides shown defaults; with ``unset_default`` an option not given on the
    command line parses as ``None`` so that callers can layer their own defaults under it.
    ``options`` names a field's option where it is not ``--field-name`` (e.g.
    ``{"intra_op_threads": "--threads"}``); the parsed value still lands on the field's name.
    """
    unknown = sorted(set(options or {}) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"options names fields that {cls.__name__} does not have: {unknown}")
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip or not field.init:
            continue
        hint = hints[field.name]
        default = (defaults or {}).get(field.name, _default_of(field))
        help_text = docs.get(field.name, "")
        if default is not None and default is not dataclasses.MISSING:
            help_text += f" (default: {default})"
        kwargs: dict[str, Any] = {"help": help_text, "dest": field.name}
        kwargs["default"] = None if unset_default else default
        base, optional = _unwrap_optional(hint)
        option = (options or {}).get(field.name, _option(field.name))
        if option != _option(field.name) and base is not bool:
            kwargs["metavar"] = option.lstrip("-").replace("-", "_").upper()
        if base is bool:
            parser.add_argument(option, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if get_origin(base) is Literal:
            kwargs["choices"] = list(get_args(base))
            kwargs["type"] = type(get_args(base)[0])
        elif base in (int, float, str):
            kwargs["type"] = base
        elif get_origin(base) in (tuple, list):
            # Repeatable, each occurrence adding one or more values; unset parses as None (the field's default).
            kwargs["type"] = get_args(base)[0]
            kwargs["nargs"] = "+"
            kwargs["action"] = "extend"
            kwargs["default"] = None
        else:
            kwargs["type"] = str
        if default is dataclasses.MISSING and not unset_default:
            kwargs["required"] = True
            kwargs.pop("default")
        parser.add_argument(option, **kwargs)


def dataclass_from_args(
    cls: type[T], args: argparse.Namespace, base: dict[str, Any] | None = None, options: dict[str, str] | None = None
) -> T:
    """Build ``cls`` from parsed options, with options left unset (``None``) taking ``base`` values.

    A ``ValueError`` from ``cls`` names the options, not the fields (see :func:`in_option_names`).
    """
    values = dict(base or {})
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        value = getattr(args, field.name, None)
        if value is not None:
            values[field.name] = tuple(value) if isinstance(value, list) else value
    try:
        return cls(**values)
    except ValueError as exc:
        raise in_option_names(exc, cls, options=options) from exc


def in_option_names(error: ValueError, *classes: type, options: dict[str, str] | None = None) -> ValueError:
    """``error`` with the fields of ``classes`` that hold an underscore written as their options.

    ``image_scale must be > 0`` becomes ``--image-scale must be > 0``, the name a command-line user
    typed. One-word fields (``gamma``, ``seed``) stay as they are: they read as the option already,
    and would also match ordinary words of a message.
    """
    names = {f.name: (options or {}).get(f.name, _option(f.name)) for cls in classes for f in dataclasses.fields(cls)}
    names = {name: option for name, option in names.items() if "_" in name}
    if not names:
        return error
    pattern = re.compile(r"(?<![\w-])(" + "|".join(sorted(map(re.escape, names), key=len, reverse=True)) + r")(?!\w)")
    return ValueError(pattern.sub(lambda match: names[match.group(1)], str(error)))


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    if get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False
