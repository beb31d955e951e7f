"""Reading YAML that users give trainpipe: config files, sweep files, a run's config.yaml and
the values of `key=value` overrides, all through `parse_yaml` / `read_yaml_file`.

`yaml.safe_load` alone builds no objects from tags, but it accepts what no config means:

- a key given twice in one mapping (the last one silently wins): refused, naming the key
  and both lines;
- an anchor that contains an alias to itself (`a: &a [*a]`), which builds an endless
  structure that every later step recurses into: refused, naming the anchor;
- an alias "bomb": a few hundred bytes whose aliases expand to billions of values, which
  the validation would walk for minutes or hours: refused by counting the values the
  document holds after expanding its aliases (`MAX_VALUES`), on the composed node graph
  and before any Python object is built, so the refusal costs no more than reading the
  file; and files over `MAX_FILE_BYTES` are not read at all.

PyYAML's SafeLoader is extended rather than replaced: no maintained library adds these
checks to it (ruamel.yaml refuses duplicate keys but has no limit on alias expansion).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from trainpipe.errors import ConfigError

# Configs and sweep files are a few kilobytes; a class list of 20,000 names is ~0.5 MB.
MAX_FILE_BYTES = 2 << 20
# Values (scalars, lists, mappings) after aliases are expanded; 20x the largest packaged
# config resolved, and far below what makes validation slow (about 1 s per million).
MAX_VALUES = 100_000

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refused(Exception):
    """A document that parses but is refused (duplicate key, recursion, size); the reader adds
    the file's name."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that records anchors (to name them), counts aliases and refuses duplicate keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.anchor_of: dict[int, tuple[str, int]] = {}  # id(node) -> (anchor, line)
        self.aliases = 0
        self.path_of: dict[int, str] = {}  # id(mapping node) -> its dotted key in the document

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self.aliases += 1
        node = super().compose_node(parent, index)
        anchor = getattr(event, "anchor", None)
        if anchor is not None and not isinstance(event, yaml.AliasEvent):
            self.anchor_of[id(node)] = (anchor, event.start_mark.line + 1)
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            # `<<: *base` merges keys that the mapping's own keys may override: only its own
            # keys are compared with each other.
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: SafeLoader's own error says so
            if first is not None:
                where = self.path_of.get(id(node))
                raise _Refused(f"the key {f'{where}.{key}' if where else key} is given twice (lines {first} and "
                               f"{line}); YAML would silently keep only the last one. Keep one of them.")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root: Node, anchor_of: dict[int, tuple[str, int]], path_of: dict[int, str]) -> int:
    """The number of values the document holds once aliases are expanded, computed on the node
    graph (each node once, so a bomb costs no more than its text); refuses a cycle. Fills
    `path_of` with the dotted key of every mapping reached, for the duplicate-key message."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    # An explicit stack: a deeply nested document must not exhaust Python's recursion.
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            size[id(node)] = 1 + sum(size[id(c)] for c in _children(node))
            on_path.discard(id(node))
            if size[id(node)] > MAX_VALUES:
                raise _TooLarge(size[id(node)])
            continue
        if id(node) in size:
            continue  # reached again through an alias
        on_path.add(id(node))
        stack.append((node, True))
        if isinstance(node, MappingNode):
            where = path_of.get(id(node), "")
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode):
                    path_of.setdefault(id(v), f"{where}.{k.value}" if where else str(k.value))
        for c in _children(node):
            if id(c) in on_path:
                anchor, line = anchor_of.get(id(c), ("?", c.start_mark.line + 1))
                raise _Refused(f"the anchor &{anchor} (line {line}) contains an alias to itself (*{anchor}), "
                               f"which would make an endless structure. Write the value out instead of "
                               f"referring to it from inside itself.")
            if id(c) not in size:
                stack.append((c, False))
    return size[id(root)]


class _TooLarge(Exception):
    def __init__(self, values: int) -> None:
        self.values = values


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def parse_yaml(text: str, *, source: str) -> Any:
    """The single YAML document in `text`, as plain Python data (safe types only).

    `source` names the text in errors (e.g. "config file 'a.yaml'", "override x=..."). Raises
    ConfigError for a duplicate key, a recursive anchor or a document that expands to more
    than MAX_VALUES values; yaml.YAMLError for text that is not YAML.
    """
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            _expanded_size(node, loader.anchor_of, loader.path_of)
        except _TooLarge as e:
            if not loader.aliases:
                raise _Refused(f"holds more than {MAX_VALUES:,} values; trainpipe reads at most {MAX_VALUES:,}, "
                               f"which no config needs. Is it a data file?") from None
            raise _Refused(
                f"its {loader.aliases} aliases (*name) expand to more than {MAX_VALUES:,} values "
                f"(at least {e.values:,}); trainpipe reads at most {MAX_VALUES:,}, which no config needs. "
                f"Write the values out, or use fewer nested aliases."
            ) from None
        return loader.construct_document(node)
    except _Refused as e:
        raise ConfigError(f"{source}: {e}") from None
    except RecursionError:
        raise ConfigError(f"{source} is nested too deeply to be a config (thousands of levels of lists or "
                          f"mappings); write it with fewer levels.") from None
    finally:
        loader.dispose()


def read_yaml_file(path: str | Path, *, what: str = "config file") -> Any:
    """The YAML document in the file at `path` (None when it is empty).

    A missing file, a directory, a file that is not text, a file over MAX_FILE_BYTES or YAML
    that `parse_yaml` refuses is a ConfigError naming the file (`what` says what it should be).
    """
    p = Path(path)
    name = f"{what} {str(p)!r}"
    if p.is_dir():
        try:
            inside = sorted(q.name for q in p.iterdir() if q.suffix in (".yaml", ".yml"))[:5]
        except OSError:
            inside = []
        hint = f" It holds {', '.join(inside)}; pass one of them." if inside else ""
        raise ConfigError(f"{name} is a directory, not a YAML file.{hint} Pass the path of a YAML file.")
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{name} cannot be read ({e.strerror or e}); check the path and its permissions.") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"{name} is larger than {MAX_FILE_BYTES >> 20} MiB, which no {what} is; did you pass a "
                          f"data or checkpoint file? A {what} is a short YAML text file.")
    try:
        if b"\0" in raw:
            raise UnicodeDecodeError("utf-8", raw, raw.index(b"\0"), raw.index(b"\0") + 1, "NUL byte")
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{name} is not a text file (byte {e.start} is not UTF-8 text); did you pass a data, "
                          f"image or checkpoint file? A {what} is a YAML text file.") from None
    try:
        return parse_yaml(text, source=name)
    except yaml.YAMLError as e:
        raise ConfigError(f"{name} is not valid YAML: {e}".replace("\n", " ")) from None

