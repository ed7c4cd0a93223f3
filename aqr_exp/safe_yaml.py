"""Reading a YAML file a user hands over: bounded in size and shape, each key once.

`yaml.safe_load` builds no arbitrary objects but trusts the document's shape:
1 KB of nested aliases ("billion laughs") is a graph of a few dozen nodes that
expands to billions once anything walks it (hashing a run's overrides,
printing a config diff), and a key written twice silently keeps its last
value. `load` checks the composed node graph before constructing anything and
refuses both with one line naming the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from aqr_exp.errors import AqrError

# libyaml's parser when PyYAML was built with it: faster, and its nesting limit holds.
Loader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MAX_BYTES = 1_000_000
# Nodes once every alias is expanded: a spec has hundreds; only alias bombs get near this.
MAX_NODES = 100_000
MAX_DEPTH = 100
_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass
class _Walk:
    """One pass over a composed document: expanded sizes by node, the nodes being walked."""

    path: Path
    max_nodes: int
    sizes: dict[int, int] = field(default_factory=dict)
    open: set[int] = field(default_factory=set)

    def error(self, node: Node, message: str) -> AqrError:
        return AqrError(f"{self.path}:{node.start_mark.line + 1}: {message}")


def _duplicate_key(node: MappingNode) -> tuple[str, int, int] | None:
    """The first key written twice in a mapping, as (key, first line, second line).

    Checked on the mapping as written, so merge keys (`<<: *base`) may still be
    overridden: that is what they are for."""
    seen: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if not isinstance(key, ScalarNode) or key.tag == _MERGE_TAG:
            continue
        line = key.start_mark.line + 1
        if (key.tag, key.value) in seen:
            return key.value, seen[key.tag, key.value], line
        seen[key.tag, key.value] = line
    return None


def _children(node: Node) -> list[tuple[str, Node]]:
    """A node's children, each with the key that leads to it (for messages)."""
    if isinstance(node, MappingNode):
        pairs = []
        for key, value in node.value:
            name = key.value if isinstance(key, ScalarNode) else "?"
            name = name if name.isprintable() else repr(name)  # messages stay one line
            pairs += [(name, key), (name, value)]
        return pairs
    if isinstance(node, SequenceNode):
        return [(f"[{index}]", child) for index, child in enumerate(node.value)]
    return []


def _expanded_size(node: Node, walk: _Walk, where: str, depth: int) -> int:
    """How many nodes `node` stands for with every alias expanded (each node walked once)."""
    ident = id(node)
    if ident in walk.sizes:
        return walk.sizes[ident]
    if ident in walk.open:
        raise walk.error(node, f"an alias refers to its own anchor in {where or 'the file'}")
    if depth > MAX_DEPTH:
        raise walk.error(node, f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(node, MappingNode) and (duplicate := _duplicate_key(node)) is not None:
        key, first, second = duplicate
        place = f"in {where}" if where else "at the top level"
        raise AqrError(
            f"{walk.path}:{second}: duplicate key {key!r} {place} "
            f"(lines {first} and {second}): write each key once"
        )
    walk.open.add(ident)
    size = 1
    for name, child in _children(node):
        inner = f"{where}.{name}" if where and not name.startswith("[") else where + name
        size += _expanded_size(child, walk, inner, depth + 1)
    walk.open.discard(ident)
    if size > walk.max_nodes:
        raise walk.error(
            node,
            f"{where or 'the document'} expands to more than {walk.max_nodes} nodes through "
            "its aliases (*name); write the values out or use fewer aliases",
        )
    walk.sizes[ident] = size
    return size


def _read_bounded(path: Path, max_bytes: int) -> bytes:
    with path.open("rb") as stream:
        data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise AqrError(f"{path}: larger than {max_bytes} bytes; a spec file is a few KB")
    return data


def load(path: Path, max_bytes: int = MAX_BYTES, max_nodes: int = MAX_NODES) -> Any:
    """The single YAML document in `path`, checked before it is built (None when empty)."""
    loader = Loader(_read_bounded(path, max_bytes))
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, _Walk(path, max_nodes), "", 0)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise AqrError(
            f"{where}: malformed YAML: {_one_line(err.problem or err.context)}"
        ) from None
    except yaml.YAMLError as err:
        raise AqrError(f"{path}: malformed YAML: {_one_line(str(err))}") from None
    except RecursionError:  # the pure-Python parser on deep nesting
        raise AqrError(f"{path}: malformed YAML: nested too deeply") from None
    finally:
        loader.dispose()


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())
