"""Definition files as YAML: parsed safely, with the line of every document path.

Inputs: the text of one YAML file. Outputs: the loaded document, a map from document paths
(``segments[0].condition.all[1]``) to 1-based lines, and ``DefinitionError`` items for syntax
errors and duplicate keys. State: none.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from udfs.definitions.diagnostics import DefinitionError, join_path


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
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        return None, {}, [DefinitionError(file, "", f"not valid YAML: {problem}", line)]
    finally:
        loader.dispose()
    lines: dict[str, int] = {}
    errors: list[DefinitionError] = []

    def walk(n: yaml.Node, path: str) -> None:
        lines.setdefault(path, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in n.value:
                key = str(key_node.value)
                child = join_path(path, key)
                if key in seen:
                    errors.append(DefinitionError(
                        file, child, f"duplicate key {key!r}: YAML keeps only the last one; "
                                     "remove or merge the others", key_node.start_mark.line + 1))
                seen.add(key)
                lines[child] = key_node.start_mark.line + 1
                walk(value_node, child)
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                walk(item, f"{path}[{i}]")

    if node is not None:
        walk(node, "")
    return data, lines, errors
