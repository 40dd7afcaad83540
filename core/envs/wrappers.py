"""Environment wrappers named on the command line: ``module:Callable[:key=value,key2=value]``.

``--wrapper minigrid.wrappers:ImgObsWrapper`` applies ``ImgObsWrapper(env)``;
``--wrapper gymnasium.wrappers:TimeLimit:max_episode_steps=200`` applies
``TimeLimit(env, max_episode_steps=200)``. Values are Python literals (``3``, ``0.5``,
``True``, ``None``, ``'text'``, ``(1, 2)``); anything else is taken as a plain string.
``Callable`` may be a dotted path inside the module (``pkg.mod:Class.factory``).
Wrappers apply in the order given, each to the result of the one before.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

__all__ = ["WrapperSpec", "parse_wrapper", "apply_wrappers"]

SYNTAX = "module:Callable or module:Callable:key=value,key2=value"


@dataclass(frozen=True)
class WrapperSpec:
    """One parsed ``--wrapper`` value: what to import and the keyword arguments to call it with."""

    text: str
    module: str
    attribute: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def load(self) -> Callable[..., gym.Env]:
        """The callable; ``ValueError`` naming the module or attribute that cannot be found."""
        try:
            module = importlib.import_module(self.module)
        except ImportError as exc:
            raise ValueError(f"--wrapper {self.text!r}: cannot import module {self.module!r}: {exc}") from None
        target: Any = module
        for part in self.attribute.split("."):
            if not hasattr(target, part):
                raise ValueError(f"--wrapper {self.text!r}: module {self.module!r} has no attribute {self.attribute!r}")
            target = getattr(target, part)
        if not callable(target):
            raise ValueError(f"--wrapper {self.text!r}: {self.module}:{self.attribute} is not callable")
        return target

    def apply(self, env: gym.Env) -> gym.Env:
        """``Callable(env, **kwargs)``; ``ValueError`` when the call fails (e.g. an unknown keyword)."""
        wrapper = self.load()
        try:
            wrapped = wrapper(env, **self.kwargs)
        except Exception as exc:  # third-party code: any failure becomes one line naming the wrapper
            raise ValueError(f"--wrapper {self.text!r}: calling it on the environment failed: {type(exc).__name__}: {exc}") from None
        if not isinstance(wrapped, gym.Env):
            raise ValueError(f"--wrapper {self.text!r}: expected it to return a gymnasium.Env, got {type(wrapped).__name__}")
        return wrapped


def parse_wrapper(text: str) -> WrapperSpec:
    """Parse ``module:Callable[:key=value,...]``; ``ValueError`` naming the bad part otherwise."""
    parts = text.split(":", 2)
    if len(parts) < 2 or not parts[0].strip() or not parts[1].strip():
        raise ValueError(f"--wrapper {text!r}: expected {SYNTAX}")
    module, attribute = parts[0].strip(), parts[1].strip()
    if not all(p.isidentifier() for p in module.split(".")) or not all(p.isidentifier() for p in attribute.split(".")):
        raise ValueError(f"--wrapper {text!r}: expected {SYNTAX} with dotted Python names")
    kwargs: dict[str, Any] = {}
    if len(parts) == 3 and parts[2].strip():
        for item in _split_items(parts[2]):
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or not key.isidentifier():
                raise ValueError(f"--wrapper {text!r}: keyword argument {item.strip()!r} is not key=value")
            kwargs[key] = _literal(value.strip())
    return WrapperSpec(text, module, attribute, kwargs)


def apply_wrappers(env: gym.Env, wrappers: Sequence[str]) -> gym.Env:
    """Apply each ``--wrapper`` value in order."""
    for text in wrappers:
        env = parse_wrapper(text).apply(env)
    return env


def _split_items(text: str) -> list[str]:
    """Split on commas outside brackets and quotes, so ``shape=(1, 2),name='a,b'`` gives two items."""
    items, depth, quote, current = [], 0, "", ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(current)
            current = ""
            continue
        current += char
    items.append(current)
    return [item for item in items if item.strip()]


def _literal(value: str) -> Any:
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value
