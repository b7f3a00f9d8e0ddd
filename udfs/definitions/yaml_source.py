"""Definition files as YAML: parsed safely, with the line of every document path.

Inputs: the bytes or text of one YAML file. Outputs: the loaded document, a map from document
paths (``segments[0].condition.all[1]``) to 1-based lines, and ``DefinitionError`` items for
bytes that are not UTF-8, control characters, syntax errors, duplicate keys, aliases that make a
document endless or huge, and nesting too deep to read. State: none.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from udfs.definitions.diagnostics import DefinitionError, join_path

#: the most values a document may hold, aliases counted at every use: definitions are small,
#: and a few nested aliases ("billion laughs") would otherwise expand past any memory
MAX_NODES = 100_000


class _Loader(yaml.SafeLoader):
    """Safe YAML without the YAML 1.1 surprises.

    ``NO``/``yes``/``on`` stay strings (country codes!) and dates stay strings; only true and
    false are booleans.
    """


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def decode_utf8(raw: bytes, file: str) -> tuple[str | None, list[DefinitionError]]:
    """The text of a definition file, or an error with the line of the first bad byte.

    Args:
        raw: The file's bytes.
        file: Its name, for errors.

    Returns:
        (the text, no errors), or (None, one error) when the bytes are not UTF-8.
    """
    try:
        return raw.decode("utf-8"), []
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        return None, [DefinitionError(
            file, "", f"not UTF-8: byte 0x{raw[exc.start]:02X} cannot be decoded "
                      f"({exc.reason}); save the file as UTF-8", line)]


def read_yaml(text: str, file: str) -> tuple[Any, dict[str, int], list[DefinitionError]]:
    """Parse YAML; also map document paths to line numbers and report duplicate keys.

    Args:
        text: The file's content.
        file: Its name, for errors.

    Returns:
        (the document or None, lines by document path, errors); the document is None after a
        syntax error, and is still returned next to duplicate-key errors.
    """
    try:
        loader = _Loader(text)  # the reader refuses control characters here
    except yaml.reader.ReaderError as exc:
        at = text.count("\n", 0, exc.position) + 1
        return None, {}, [DefinitionError(
            file, "", f"not valid YAML: character U+{exc.character:04X}, a control "
                      "character; YAML allows only printable characters, tabs and line "
                      "breaks: remove it", at)]
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except RecursionError:
        # PyYAML composes recursively: a few hundred levels exhaust Python's stack
        return None, {}, [DefinitionError(
            file, "", "not valid YAML for a definition: nested too deeply (hundreds of "
                      "levels); definitions nest a few levels: flatten it")]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        return None, {}, [DefinitionError(file, "", f"not valid YAML: {problem}", line)]
    finally:
        loader.dispose()
    lines: dict[str, int] = {}
    errors: list[DefinitionError] = []
    open_nodes: set[int] = set()  # the nodes being walked: meeting one again is a cycle
    count = 0

    def walk(n: yaml.Node, path: str) -> bool:
        """Record lines below ``n``; False when the document is endless or too large."""
        nonlocal count
        count += 1
        if id(n) in open_nodes:
            errors.append(DefinitionError(
                file, path, "not valid YAML for a definition: an alias refers to a value that "
                            "contains it, so the document never ends: write the value out",
                n.start_mark.line + 1))
            return False
        if count > MAX_NODES:
            errors.append(DefinitionError(
                file, "", f"the document holds more than {MAX_NODES} values (aliases counted "
                          "at every use); definitions are small: write out fewer aliases"))
            return False
        lines.setdefault(path, n.start_mark.line + 1)
        open_nodes.add(id(n))
        try:
            if isinstance(n, yaml.MappingNode):
                seen: set[str] = set()
                for key_node, value_node in n.value:
                    key = str(key_node.value)
                    child = join_path(path, key)
                    if key in seen:
                        errors.append(DefinitionError(
                            file, child, f"duplicate key {key!r}: YAML keeps only the last "
                                         "one; remove or merge the others",
                            key_node.start_mark.line + 1))
                    seen.add(key)
                    lines[child] = key_node.start_mark.line + 1
                    if not walk(value_node, child):
                        return False
            elif isinstance(n, yaml.SequenceNode):
                for i, item in enumerate(n.value):
                    if not walk(item, f"{path}[{i}]"):
                        return False
        finally:
            open_nodes.discard(id(n))
        return True

    if node is not None and not walk(node, ""):
        return None, {}, errors[-1:]
    return data, lines, errors
