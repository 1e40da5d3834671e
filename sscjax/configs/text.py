"""Configs as TOML text: written with every field's doc and the paper's value as a comment above it, read back
with `tomllib`, and changed by dotted `--set key.path=value` assignments whose values are TOML values.

A rendered file is a free header (its leading comment lines up to the first empty line, kept as they are)
followed by the generated body, so `render(read(file), header_of(file)) == file` holds for every file this
module wrote.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sscjax.configs import MODEL_ARGUMENTS
from sscjax.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

WIDTH = 120  # comment lines are wrapped at this width
NOT_SET = "(not set)"


def toml_value(value: Any) -> str:
    """One value in TOML syntax: booleans, integers, floats (shortest round-trip form), strings, lists."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise ConfigError(f"{value!r} has no TOML form")


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, WIDTH - 2, initial_indent="# ", subsequent_indent="# ")


def _paper_note(paper: Any) -> str:
    return f" (paper: {'not set' if paper is None else toml_value(paper)})"


def _entry(key: str, value: Any, doc: str, paper: Any) -> list[str]:
    """The comment and the `key = value` line of one setting (commented out when not set)."""
    line = f"# {key} = {NOT_SET}" if value is None else f"{key} = {toml_value(value)}"
    return [*_comment(doc + _paper_note(paper)), line]


def _table(config: Any, paper: Any, path: str) -> list[str]:
    """Lines of one dataclass's table (`path` "" for the top level): its settings, then its sub-tables."""
    doc = (type(config).__doc__ or "").split("\n\n")[0]
    lines = [*_comment(" ".join(doc.split())), f"[{path}]"] if path else []
    subtables = []
    for f in dataclasses.fields(config):
        value, base = getattr(config, f.name), getattr(paper, f.name, None)
        key = f"{path}.{f.name}" if path else f.name
        if dataclasses.is_dataclass(value) or isinstance(value, dict):
            subtables.append((value, base, key, f.metadata.get("doc", "")))
        else:
            if not f.metadata.get("doc"):
                raise ConfigError(f"{type(config).__name__}.{f.name} has no doc for the settings file")
            lines += _entry(f.name, value, f.metadata["doc"], base)
    for value, base, key, doc in subtables:
        lines.append("")
        lines += (
            _table(value, base, key) if dataclasses.is_dataclass(value) else _arguments(value, base or {}, key, doc)
        )
    return lines


def _arguments(kwargs: dict, paper: dict, path: str, doc: str) -> list[str]:
    """The table of a model's keyword arguments (`doc` says what they are), each documented by MODEL_ARGUMENTS."""
    lines = [*_comment(doc), f"[{path}]"]
    for key, value in kwargs.items():
        if key not in MODEL_ARGUMENTS:
            raise ConfigError(f"model argument {key!r} has no doc in sscjax.configs.MODEL_ARGUMENTS")
        lines += _entry(key, value, MODEL_ARGUMENTS[key], paper.get(key))
    return lines


def render(config: Any, paper: Any, header: str = "") -> str:
    """`config` as a TOML file: `header` (comment lines), then every setting with its doc and `paper`'s value."""
    body = "\n".join(_table(config, paper, "")) + "\n"
    return f"{header.rstrip()}\n\n{body}" if header.strip() else body


def header_of(text: str) -> str:
    """The free header of a settings file: its leading comment lines up to the first empty line."""
    lines = text.splitlines()
    end = next((i for i, line in enumerate(lines) if not line.strip()), len(lines))
    head = lines[:end]
    return "\n".join(head) + "\n" if head and all(line.startswith("#") for line in head) else ""


def parse(text: str, source: str) -> dict:
    """A TOML document as plain data; ConfigError naming `source` when it is not valid TOML."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML ({e})") from None


def read(path: str | Path) -> dict:
    """A TOML settings file as plain data."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the settings ({e})") from None
    return parse(text, str(path))


def assignment(text: str) -> tuple[list[str], Any]:
    """`key.path=value` -> (["key", "path"], value): the value read as TOML (3e-4, true, "name", [1, 2]); text that
    is no TOML value (cosine, a file path) is taken as a string."""
    key, sep, raw = text.partition("=")
    path = key.strip().split(".")
    if not sep or not all(path):
        raise ConfigError(f"--set {text!r}: expected key.path=value, e.g. train.learning_rate=3e-4")
    try:
        value = tomllib.loads(f"value = {raw.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return path, value


def assign(data: dict, assignments: Sequence[str]) -> dict:
    """Plain config data with every `key.path=value` of `assignments` put in (checked later by `from_dict`)."""
    data = json.loads(json.dumps(data))
    for text in assignments:
        path, value = assignment(text)
        table = data
        for depth, key in enumerate(path[:-1]):
            table = table.setdefault(key, {})
            if not isinstance(table, dict):
                raise ConfigError(f"--set {text}: {'.'.join(path[: depth + 1])} is a setting, not a table")
        table[path[-1]] = value
    return data
