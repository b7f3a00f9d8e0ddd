"""Diagnostics of definitions: what is wrong, where, and what was probably meant.

Inputs: the findings of a compiler or file reader. Outputs: ``DefinitionError`` items (file,
path in the document, message, line), ``InvalidDefinitions`` (several at once), their rendering
(``format_errors``) and the helpers messages are built from: how a value is described, a
did-you-mean suggestion, a listing of choices, a document path. State: none.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


class DefinitionError(ValueError):
    """One thing wrong with a definition: where (file, path in the document) and what.

    Attributes:
        file: The file name, or ``definition <id> v<version>`` for a DefinitionUpdate body.
        path: Location in the document, e.g. ``segments[2].condition.all[1].feature.op``; empty
            for the document as a whole.
        message: What is wrong and what is allowed.
        line: 1-based line in the file when known (YAML files), else None.
    """

    def __init__(self, file: str, path: str, message: str, line: int | None = None) -> None:
        super().__init__(file, path, message, line)
        self.file = file
        self.path = path
        self.message = message
        self.line = line

    @property
    def errors(self) -> tuple[DefinitionError, ...]:
        """Every error this exception stands for (just itself)."""
        return (self,)

    def __str__(self) -> str:
        return format_errors(self.errors)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DefinitionError) or isinstance(other, InvalidDefinitions):
            return NotImplemented
        return (self.file, self.path, self.message, self.line) == (
            other.file, other.path, other.message, other.line
        )

    def __hash__(self) -> int:
        return hash((self.file, self.path, self.message, self.line))


class InvalidDefinitions(DefinitionError):
    """Several ``DefinitionError`` items raised at once; file, path and message are the first's."""

    def __init__(self, errors: Sequence[DefinitionError]) -> None:
        if not errors:
            raise ValueError("InvalidDefinitions needs at least one error")
        first = errors[0]
        super().__init__(first.file, first.path, first.message, first.line)
        self._errors = tuple(errors)

    @property
    def errors(self) -> tuple[DefinitionError, ...]:
        """Every error found, in document order."""
        return self._errors

    def __reduce__(self) -> tuple[Any, ...]:
        return (InvalidDefinitions, (list(self._errors),))

    __hash__ = DefinitionError.__hash__


def format_errors(errors: Iterable[DefinitionError]) -> str:
    """Render errors one per line as ``file:path: message``, with `` (line N)`` when known.

    Args:
        errors: The errors, typically from ``validate_files`` or ``InvalidDefinitions.errors``.

    Returns:
        The lines joined with newlines (no trailing newline).
    """
    lines = []
    for error in errors:
        where = f"{error.file}:{error.path}" if error.path else error.file
        suffix = f" (line {error.line})" if error.line is not None else ""
        lines.append(f"{where}: {error.message}{suffix}")
    return "\n".join(lines)


def format_number(value: Any) -> str:
    """A number as people write it: ``100`` not ``100.0``, at most four decimals."""
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def join_path(path: str, key: str) -> str:
    """The document path of ``key`` inside ``path`` (``a.b`` + ``c`` -> ``a.b.c``)."""
    return f"{path}.{key}" if path else key


def describe(value: Any) -> str:
    """What a value is, for "got ..." in messages: ``the string 'x'``, ``a list``, ..."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {format_number(value)}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def suggest(word: str, choices: Iterable[str], aliases: Mapping[str, str] | None = None) -> str:
    """``; did you mean 'x'?`` or the empty string.

    Args:
        word: What was written.
        choices: What is allowed.
        aliases: Known misspellings and what they mean, tried first.
    """
    choices = list(choices)
    if aliases and word in aliases and aliases[word] in choices:
        return f"; did you mean {aliases[word]!r}?"
    for choice in choices:
        if choice.lower() == word.lower():
            return f"; did you mean {choice!r}?"
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def listing(choices: Sequence[str]) -> str:
    """The allowed choices as one comma-separated line."""
    return ", ".join(choices)
