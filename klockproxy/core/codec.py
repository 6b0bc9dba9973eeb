"""One codec: every JSON and YAML document klockproxy reads goes through here.

Request bodies, patches, lock files, manifests for ``klockproxy check`` and watch events are
decoded with one strictness, that of the API server where Python's libraries differ:

* The media type is matched case-insensitively, parameters (``charset``) are ignored, and an
  empty ``Content-Type`` means JSON (the API server's first supported media type).
* JSON: ``application/json`` and any ``application/*+json``. ``NaN``/``Infinity``, invalid
  UTF-8 and duplicate object keys (Go merges them, Python keeps the last) are refused;
  escaped surrogate pairs are joined and lone ones replaced, as Go does.
* YAML: ``application/yaml`` and any ``*+yaml`` (``application/apply-patch+yaml``); safe
  loading only, no implicit timestamps (an unquoted ``2024-01-01`` stays a string, as the API
  server's YAML-to-JSON conversion keeps it), string keys only, no duplicate keys, no ``<<``
  merge keys, and a bound on alias expansion ("billion laughs").

Every failure is a ``DecodeError`` with a precise message (``MalformedDocument`` carries the line
and column of malformed JSON or YAML).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from types import UnionType
from typing import Any, TypeAlias

import yaml

from klockproxy.core.errors import DecodeError

JSON: TypeAlias = Any

# How many values a decoded YAML document may expand to (aliases make small texts huge).
MAX_YAML_NODES = 1_000_000
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


class _StrictConstructor(yaml.constructor.SafeConstructor):
    """SafeConstructor refusing duplicate and merge keys (mixed into both loaders below).

    PyYAML lets the last duplicate win silently; a server that kept the first (or refused
    the document) would store other labels than the ones judged, so duplicates are refused.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                # go-yaml (the API server's YAML decoder) applies ``<<`` merges in document
                # order, so a merge after an explicit key overwrites it; PyYAML lets the
                # explicit key win. Parsers that disagree on the labels cannot be trusted.
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    "YAML merge keys (<<) are not accepted: parsers disagree on their order",
                    key_node.start_mark,
                )
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # unhashable: the base class reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


class _PythonYamlLoader(_StrictConstructor, yaml.SafeLoader):
    """The strict loader on PyYAML's pure-Python scanner and parser."""


# The same loader on libyaml's C scanner and parser (only construction stays in Python):
# about seven times faster on a 10,000-Lock file. Both are SafeLoader/SafeConstructor
# based, so the strictness above is the same; tests check that they agree on a corpus.
# One difference, where libyaml sides with the API server: go-yaml (a port of libyaml)
# refuses a ``\ud83d``-style surrogate escape in a double-quoted scalar, and so does
# libyaml; the pure-Python parser accepts it (then joined or replaced, see below).
_CYamlLoader: type[_StrictConstructor] | None = None
if getattr(yaml, "__with_libyaml__", False):
    import yaml.cyaml

    _CParser: Any = yaml.cyaml.CParser  # type: ignore[attr-defined]

    class _CLoader(_StrictConstructor, yaml.CSafeLoader):
        """The strict loader on libyaml."""

    class _CEventLoader(
        yaml.composer.Composer,
        _CParser,
        _StrictConstructor,
        yaml.resolver.Resolver,
    ):
        """libyaml's events composed in Python (``iter_yaml_documents(stream_items=True)``):
        a document can then be composed and constructed one list item at a time."""

        def __init__(self, stream: str | bytes) -> None:
            _CParser.__init__(self, stream)
            yaml.composer.Composer.__init__(self)
            _StrictConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)
            # Events ``_fast_value`` read and handed back (last first): the composer
            # reads them again before the parser's next ones.
            self.replay: list[Any] = []
            # Anchors ``_fast_value`` built, with their events (the composer's: ``anchors``).
            self.fast_anchors: dict[str, list[Any]] = {}
            # The tags plain scalars resolved to, by their text.
            self.fast_tags: dict[str, str] = {}
            # libyaml hands out no surrogate: a text with one cannot be encoded for it
            # (UnicodeEncodeError above), bytes with one are refused (ReaderError), and so
            # are surrogate escapes. So ``_fast_value``'s values need no
            # ``check_json_values`` (see ``_check_fast``); searching a 1.5 MB text for them
            # would hold the event loop for some 7 ms.
            self.no_surrogates = True

        # The parser's own ``get_event`` (``_fast_value`` reads events without replay).
        parser_get_event = _CParser.get_event

        # The composer reads events through these three; ``replay`` first.
        def check_event(self, *choices: Any) -> bool:
            if self.replay:
                return not choices or isinstance(self.replay[-1], choices)
            result: bool = _CParser.check_event(self, *choices)
            return result

        def peek_event(self) -> Any:
            if self.replay:
                return self.replay[-1]
            return _CParser.peek_event(self)

        def get_event(self) -> Any:
            if self.replay:
                return self.replay.pop()
            return _CParser.get_event(self)

    _CYamlLoader = _CLoader

_NO_TIMESTAMPS = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_CEventYamlLoader: type[_StrictConstructor] | None = (
    _CEventLoader if _CYamlLoader is not None else None
)
for _loader in (_PythonYamlLoader, _CYamlLoader, _CEventYamlLoader):
    if _loader is not None:
        _loader.yaml_implicit_resolvers = _NO_TIMESTAMPS  # type: ignore[attr-defined]

#: The YAML parsers available, by name; ``load_yaml_documents`` uses the first.
YAML_PARSERS: dict[str, type[_StrictConstructor]] = {
    name: loader
    for name, loader in (("libyaml", _CYamlLoader), ("python", _PythonYamlLoader))
    if loader is not None
}
DEFAULT_YAML_PARSER = next(iter(YAML_PARSERS))


def media_type(content_type: str) -> str:
    """``"Application/JSON; charset=utf-8"`` -> ``"application/json"``."""
    return content_type.split(";", 1)[0].strip().lower()


def _fix_surrogates(text: str) -> str:
    """Join escaped surrogate pairs and replace lone surrogates with U+FFFD, as Go does.

    Python's json and PyYAML keep ``"\\ud83d\\ude00"`` as two code points (PyYAML) or a
    lone ``"\\ud83d"`` as is (both); Go's JSON decoding joins pairs and replaces the rest.
    """
    if not _SURROGATE.search(text):
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def check_json_values(value: JSON, what: str = "document") -> None:
    """Refuse what JSON cannot carry (non-string keys, dates, bytes, NaN) in a YAML result,
    and join escaped surrogate pairs in its strings (in place).

    Also bounds the number of values visited, since YAML aliases can make a small text
    expand to billions of values.
    """
    budget = MAX_YAML_NODES
    stack = [value]
    while stack:
        item = stack.pop()
        budget -= 1
        if budget < 0:
            raise DecodeError(f"{what} expands to more than {MAX_YAML_NODES} values")
        if isinstance(item, dict):
            for key, child in list(item.items()):
                if not isinstance(key, str):
                    raise DecodeError(f"{what}: non-string key {key!r}")
                if isinstance(child, str):
                    item[key] = _fix_surrogates(child)
                else:
                    stack.append(child)
                fixed = _fix_surrogates(key)
                if fixed != key:
                    item[fixed] = item.pop(key)
        elif isinstance(item, list):
            for index, child in enumerate(item):
                if isinstance(child, str):
                    item[index] = _fix_surrogates(child)
                else:
                    stack.append(child)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise DecodeError(f"{what}: non-finite number {item!r}")
        elif item is not None and not isinstance(item, str | int | bool):
            raise DecodeError(f"{what}: unsupported value of type {type(item).__name__}")


class MalformedDocument(DecodeError):
    """Malformed JSON or YAML (``language``); ``line`` and ``column`` (1-based) when known."""

    def __init__(
        self, language: str, what: str, problem: str, line: int | None, column: int | None
    ) -> None:
        self.where = f" at line {line}, column {column}" if line is not None else ""
        super().__init__(f"invalid {what}{self.where}: {problem}")
        self.language = language
        self.problem = problem
        self.line = line
        self.column = column


def _syntax_error(e: yaml.YAMLError, what: str) -> MalformedDocument:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = one_line(getattr(e, "problem", None) or str(e))
    if mark is None:
        return MalformedDocument("YAML", what, problem, None, None)
    return MalformedDocument("YAML", what, problem, mark.line + 1, mark.column + 1)


def load_yaml_documents(
    data: bytes | str, what: str = "YAML", *, parser: str = DEFAULT_YAML_PARSER
) -> list[JSON]:
    """Every document of a YAML stream, loaded safely and checked to be JSON-compatible.

    ``parser`` names one of ``YAML_PARSERS`` (libyaml when PyYAML was built with it).
    """
    return list(iter_yaml_documents(data, what, parser=parser))


def iter_yaml_documents(
    data: bytes | str, what: str = "YAML", *, parser: str = DEFAULT_YAML_PARSER
) -> Iterator[JSON]:
    """``load_yaml_documents`` one document at a time (parsed as it is asked for), so that a
    caller can do other work between the documents of a long stream."""
    loader = YAML_PARSERS[parser](data)  # type: ignore[call-arg]
    index = 0
    try:
        while True:
            try:
                # A SafeConstructor subclass: no arbitrary Python objects.
                if not loader.check_data():
                    return
                doc = loader.get_data()
            except yaml.YAMLError as e:
                raise _syntax_error(e, what) from e
            except RecursionError as e:
                # PyYAML composes nested collections recursively; refuse rather than crash.
                raise MalformedDocument("YAML", what, "nested too deeply", None, None) from e
            except UnicodeDecodeError as e:
                raise DecodeError(f"invalid {what}: {e}") from e
            if isinstance(doc, str):
                doc = _fix_surrogates(doc)
            check_json_values(doc, f"{what} document {index}")
            yield doc
            index += 1
    finally:
        loader.dispose()  # type: ignore[attr-defined]


@dataclass
class StreamedMapping:
    """A document whose root is a mapping, read by ``iter_yaml_documents(stream_items=True)``.

    ``items`` yields the elements of its ``items`` sequence one at a time, each composed and
    constructed only when asked for (a ``kind: List`` of 10,000 objects is never built in
    one piece); ``head`` is the rest of the mapping, complete once ``items`` is exhausted
    (it may come after ``items`` in the text). ``has_items`` tells whether ``items`` was a
    sequence that was streamed (otherwise it is in ``head``, if present at all). The same
    refusals as ``load_yaml_documents`` apply, to the head too (duplicate keys, ``items``
    twice, merge keys).
    """

    head: dict[str, JSON]
    items: Iterator[JSON]
    has_items: bool = False


def iter_yaml_documents_streaming(
    data: bytes | str, what: str = "YAML", *, parser: str = DEFAULT_YAML_PARSER
) -> Iterator[JSON | StreamedMapping]:
    """Like ``iter_yaml_documents``, but a document whose root is a mapping comes as a
    ``StreamedMapping`` whose ``items`` must be consumed before the next document."""
    loader_class = _CEventYamlLoader if parser == "libyaml" else YAML_PARSERS[parser]
    if loader_class is None:
        loader_class = YAML_PARSERS[parser]
    loader: Any = loader_class(data)  # type: ignore[call-arg]
    events = yaml.events
    index = 0
    try:
        with _YamlErrors(what):
            loader.get_event()  # StreamStart
        while True:
            with _YamlErrors(what):
                if loader.check_event(events.StreamEndEvent):
                    return
                loader.get_event()  # DocumentStart
                streamed = loader.check_event(events.MappingStartEvent)
                if not streamed:
                    doc = _node_value(loader, None, what, index)
                head: dict[str, JSON] | None = None
                if streamed and _fast_ok(loader):
                    with contextlib.suppress(_Unusual):
                        head = _fast_value(loader, stream_items=True)
            if streamed:
                mapping = StreamedMapping({}, iter(()))
                if head is not None:
                    mapping.items = _checked_head(loader, mapping, head, what, index)
                else:
                    mapping.items = _stream_mapping(loader, mapping, what, index)
                yield mapping
                for _ in mapping.items:
                    raise DecodeError(f"{what}: the items of a document were not all read")
            else:
                yield doc
            with _YamlErrors(what):
                loader.get_event()  # DocumentEnd
                loader.anchors = {}
                loader.fast_anchors = {}
            index += 1
    finally:
        loader.dispose()


class _Unusual(Exception):
    """``_fast_value`` met something it leaves to the composer and constructor."""


_STR_TAG = "tag:yaml.org,2002:str"
# The scalar tags whose SafeConstructor functions ``_fast_value`` calls itself (plain
# functions of one node; any other tag is left to the constructor).
_FAST_SCALAR_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("null", "bool", "int", "float")
)
# Deeper than this, the composer's own recursion decides (it refuses very deep documents).
_FAST_DEPTH = 64


def _fast_value(loader: Any, *, stream_items: bool = False) -> JSON:
    """The next node's value (a scalar, or a whole sequence or mapping) built straight from
    libyaml's events, without the composer's nodes: several times faster, and what makes a
    10,000-Lock file load in a fraction of a second.

    Only the plain cases: no explicit tags, string keys, none twice, no merge key, anchors
    defined once and aliases of nodes this function built, not too deep and not expanding
    to too much. On anything else the events read so far are handed back to the loader
    (``replay``) and ``_Unusual`` is raised: the caller then composes and constructs the
    node as before, so every refusal and error (its text, its line and column, the order of
    the errors) is exactly the composer's and constructor's. What this builds is what they
    build: the same tags resolved by the same resolver, the same constructor functions for
    null, bool, int and float, strings as they are, and an alias built again from its
    anchor's events (an equal value; the constructor shares one). ``stream_items``: the node
    is a document's root mapping, whose ``items`` sequence is left to ``_stream_mapping``.
    """
    events = yaml.events
    scalar_event, mapping_start, sequence_start, alias_event = (
        events.ScalarEvent,
        events.MappingStartEvent,
        events.SequenceStartEvent,
        events.AliasEvent,
    )
    end_events = (events.MappingEndEvent, events.SequenceEndEvent)
    get_event = type(loader).parser_get_event
    resolve = loader.resolve
    tags: dict[str, str] = loader.fast_tags
    constructors = loader.yaml_constructors
    # The parser's events this call read (handed back if it gives up).
    read: list[Any] = []
    # Anchors defined by this call: anchor -> (where its events start in ``read``, them).
    defined: dict[str, tuple[int, list[Any] | None]] = {}
    known: dict[str, list[Any]] = loader.fast_anchors
    # Aliases being built again: iterators over their anchors' events.
    expanding: list[Iterator[Any]] = []
    budget = _FAST_EXPANSION
    # Open collections: (the key in the enclosing mapping they are the value of, or None;
    # the dict or list being filled; their anchor and where their events start, or None).
    stack: list[tuple[Any, Any, tuple[str, int] | None]] = []
    # In an open mapping: its key awaiting a value (None: the next scalar is a key).
    pending_key: Any = None
    try:
        while True:
            if expanding:
                event = next(expanding[-1], None)
                if event is None:
                    expanding.pop()
                    continue
                budget -= 1
                if budget < 0:
                    raise _Unusual  # aliases expanding to much: the composer bounds them
                real = False
            else:
                event = get_event(loader)
                read.append(event)
                real = True
            kind = type(event)
            if kind is scalar_event or kind is mapping_start or kind is sequence_start:
                # Anchors count where they were read, not where an alias is built again.
                anchor = event.anchor if real else None
                if anchor is not None and (
                    anchor in defined or anchor in known or anchor in loader.anchors
                ):
                    raise _Unusual  # defined twice: the composer refuses it
                if event.tag is not None:
                    raise _Unusual
                if kind is not scalar_event:
                    if len(stack) >= _FAST_DEPTH:
                        raise _Unusual
                    if stream_items and len(stack) == 1 and pending_key == "items":
                        raise _Unusual  # streamed (only a sequence is; a mapping is rare)
                    opened = None
                    if anchor is not None:
                        # Known from here on (defined twice inside itself is refused too),
                        # its events once it is closed (an alias inside itself is unusual).
                        opened = (anchor, len(read) - 1)
                        defined[anchor] = (len(read) - 1, None)
                    stack.append((pending_key, {} if kind is mapping_start else [], opened))
                    pending_key = None
                    continue
                value = event.value
                if event.implicit[0]:
                    # A plain scalar: its tag depends on its text alone (no path resolvers).
                    tag = tags.get(value)
                    if tag is None:
                        tag = tags[value] = resolve(yaml.ScalarNode, value, event.implicit)
                    if tag != _STR_TAG:
                        if tag not in _FAST_SCALAR_TAGS:
                            raise _Unusual
                        node = yaml.ScalarNode(
                            tag, value, event.start_mark, event.end_mark, style=event.style
                        )
                        value = constructors[tag](loader, node)
                        if type(value) is float and not math.isfinite(value):
                            raise _Unusual  # refused by check_json_values
                if anchor is not None:
                    defined[anchor] = (len(read) - 1, [event])
            elif kind is alias_event:
                found = defined.get(event.anchor)
                again = found[1] if found is not None else known.get(event.anchor)
                if again is None:
                    raise _Unusual  # undefined, or defined by the composer
                expanding.append(iter(again))
                continue
            elif isinstance(event, end_events):
                if not stack:
                    raise _Unusual  # not the start of a node
                pending_key, value, opened = stack.pop()
                if opened is not None:
                    defined[opened[0]] = (opened[1], read[opened[1] :])
            else:
                raise _Unusual  # not the start of a node
            if not stack:
                break
            container = stack[-1][1]
            if type(container) is list:
                container.append(value)
            elif pending_key is None:
                # A key: a string (a scalar), new in its mapping.
                if kind is not scalar_event or type(value) is not str or value in container:
                    raise _Unusual
                pending_key = value
            else:
                container[pending_key] = value
                pending_key = None
    except _Unusual:
        read.reverse()
        loader.replay.extend(read)
        raise
    if len(read) + _FAST_EXPANSION - budget > MAX_YAML_NODES:
        # More events than check_json_values lets values through: it says so.
        read.reverse()
        loader.replay.extend(read)
        raise _Unusual
    if defined:
        _compose_anchors(loader, defined)
    return value


# How many events of aliases ``_fast_value`` builds again before leaving a node to the
# composer (which shares the aliased nodes; ``check_json_values`` bounds their expansion).
_FAST_EXPANSION = 100_000


def _compose_anchors(loader: Any, defined: dict[str, tuple[int, list[Any] | None]]) -> None:
    """Make the anchors a ``_fast_value`` defined known to the composer too (a node it
    composes later may alias them), and to later ``_fast_value`` calls."""
    for anchor, (_, anchored) in sorted(defined.items(), key=lambda item: item[1][0]):
        if anchored is None:
            continue  # cannot be: every collection read was closed
        loader.fast_anchors[anchor] = anchored
        if anchor not in loader.anchors:  # not composed with an enclosing anchor's node
            loader.replay.extend(reversed(anchored))
            loader.compose_node(None, None)


# Tests turn the fast path off to compare it with the composer's.
_FAST_EVENTS = True


def _fast_ok(loader: Any) -> bool:
    """Whether ``_fast_value`` may read the next node (libyaml's events, none handed back)."""
    return _FAST_EVENTS and getattr(loader, "replay", None) == []


def _node_value(loader: Any, position: int | None, what: str, index: int) -> JSON:
    """The next node's value: built fast if it is plain, else composed and constructed."""
    if _fast_ok(loader):
        try:
            value = _fast_value(loader)
        except _Unusual:
            pass
        else:
            return _check_fast(loader, value, f"{what} document {index}")
    node = loader.compose_node(None, position)
    return _construct(loader, node, what, index)


def _check_fast(loader: Any, value: JSON, what: str) -> JSON:
    """``check_json_values`` for a value ``_fast_value`` built, where it can find anything.

    It cannot when the text has no surrogate: ``_fast_value`` gives up on non-string keys,
    on NaN and infinities and on more values than the check allows, and builds nothing but
    dicts, lists, strings, None, booleans, integers and floats.
    """
    if loader.no_surrogates:
        return value
    if isinstance(value, str):
        value = _fix_surrogates(value)
    check_json_values(value, what)
    return value


def _checked_head(
    loader: Any, mapping: StreamedMapping, head: dict[str, JSON], what: str, index: int
) -> Iterator[JSON]:
    """The (empty) ``items`` of a root mapping ``_fast_value`` built whole: its head checked
    where ``_stream_mapping`` checks it, once the items were read."""
    _check_fast(loader, head, f"{what} document {index}")
    mapping.head.update(head)
    yield from ()


class _YamlErrors:
    """Map PyYAML's errors to DecodeError, as ``iter_yaml_documents`` does."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None, tb: Any) -> None:
        if isinstance(e, yaml.YAMLError):
            raise _syntax_error(e, self.what) from e
        if isinstance(e, RecursionError):
            raise MalformedDocument("YAML", self.what, "nested too deeply", None, None) from e
        if isinstance(e, UnicodeDecodeError):
            raise DecodeError(f"invalid {self.what}: {e}") from e


def _construct(loader: Any, node: Any, what: str, index: int) -> JSON:
    doc = loader.construct_document(node)
    if isinstance(doc, str):
        doc = _fix_surrogates(doc)
    check_json_values(doc, f"{what} document {index}")
    return doc


def _until_end(loader: Any, end: type, what: str) -> Iterator[None]:
    """Once per child of the open mapping or sequence, until its ``end`` event (consumed);
    a YAML error on the way is a DecodeError naming ``what``."""
    while True:
        with _YamlErrors(what):
            if loader.check_event(end):
                loader.get_event()
                return
        yield


def _stream_mapping(loader: Any, mapping: StreamedMapping, what: str, index: int) -> Iterator[JSON]:
    events = yaml.events
    with _YamlErrors(what):
        start = loader.get_event()
        tag = start.tag
        if tag is None or tag == "!":
            tag = loader.resolve(yaml.MappingNode, None, start.implicit)
        pairs: list[tuple[Any, Any]] = []
        root = yaml.MappingNode(tag, pairs, start.start_mark, None, flow_style=start.flow_style)
        if start.anchor is not None:
            loader.anchors[start.anchor] = root
    items_key = None
    for _ in _until_end(loader, events.MappingEndEvent, what):
        with _YamlErrors(what):
            key = loader.compose_node(root, None)
            stream = (
                isinstance(key, yaml.ScalarNode)
                and key.tag == "tag:yaml.org,2002:str"
                and key.value == "items"
                and items_key is None
                and loader.check_event(events.SequenceStartEvent)
            )
            if not stream:
                pairs.append((key, loader.compose_node(root, key)))
                continue
            items_key = key
            seq = loader.get_event()
        mapping.has_items = True
        for position, _ in enumerate(_until_end(loader, events.SequenceEndEvent, what)):
            with _YamlErrors(what):
                item = _node_value(loader, position, f"{what} items[{position}]", index)
            yield item
        # In the head, the streamed sequence stands as an empty one: a second ``items``
        # key is then a duplicate like any other.
        empty = yaml.SequenceNode("tag:yaml.org,2002:seq", [], seq.start_mark, seq.end_mark)
        pairs.append((items_key, empty))
    with _YamlErrors(what):
        head = _construct(loader, root, what, index)
    if isinstance(head, dict):
        if mapping.has_items:
            del head["items"]  # the empty stand-in
        mapping.head.update(head)


def load_yaml_object(data: bytes | str, what: str = "YAML body") -> dict[str, JSON]:
    """Exactly one YAML document, which must be an object (JSON is read as JSON first)."""
    if data.lstrip()[:1] in (b"{", "{"):
        # JSON is YAML, but PyYAML trips on some valid JSON (tabs as whitespace).
        try:
            return load_json_object(data.encode() if isinstance(data, str) else data, what)
        except DecodeError:
            pass
    docs = load_yaml_documents(data, what)
    if len(docs) != 1:
        raise DecodeError(f"{what} must hold exactly one document, found {len(docs)}")
    doc = docs[0]
    if doc is None:
        raise DecodeError(f"{what} is empty")
    if not isinstance(doc, dict):
        raise DecodeError(f"{what} must be an object, not {json_type_name(doc)}")
    return doc


def _reject_constant(name: str) -> float:
    # Python's json accepts NaN/Infinity; the API server does not.
    raise ValueError(f"invalid JSON constant {name}")


def _refuse_duplicate_keys(pairs: list[tuple[str, JSON]]) -> dict[str, JSON]:
    # Python keeps the last of two equal keys; Go's encoding/json (the API server, for
    # built-in kinds) decodes both into the same struct or map, MERGING them: with
    # ``"labels":{"aura":"red"},"labels":{}`` it stores aura=red where Python sees no label.
    # Judging other labels than the ones stored would be a bypass, so duplicates are refused.
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r} in a JSON object")
            seen.add(key)
    return doc


def load_json(data: bytes | str, what: str = "JSON") -> JSON:
    """Parse any JSON value strictly (DecodeError; duplicate keys and NaN refused)."""
    try:
        doc = json.loads(
            data, parse_constant=_reject_constant, object_pairs_hook=_refuse_duplicate_keys
        )
    except json.JSONDecodeError as e:
        raise MalformedDocument("JSON", what, e.msg, e.lineno, e.colno) from e
    except (ValueError, UnicodeDecodeError) as e:
        raise DecodeError(f"invalid {what}: {e}") from e
    except RecursionError as e:
        raise MalformedDocument("JSON", what, "nested too deeply", None, None) from e
    raw = data.encode() if isinstance(data, str) else data
    if _ESCAPED_SURROGATE.search(raw):
        if isinstance(doc, str):
            return _fix_surrogates(doc)
        check_json_values(doc, what)
    return doc


def load_json_object(data: bytes | str, what: str = "JSON body") -> dict[str, JSON]:
    """Parse a JSON object (DecodeError for anything else, duplicate keys included)."""
    doc = load_json(data, what)
    if not isinstance(doc, dict):
        raise DecodeError(f"{what} must be an object, not {json_type_name(doc)}")
    return doc


def is_json_type(mtype: str) -> bool:
    """JSON media types: ``application/json`` and any ``application/*+json`` (patches too)."""
    return mtype in ("", "application/json") or (
        mtype.startswith("application/") and mtype.endswith("+json")
    )


def is_yaml_type(mtype: str) -> bool:
    """YAML media types, ``application/apply-patch+yaml`` included."""
    return mtype in ("application/yaml", "application/x-yaml", "text/yaml") or mtype.endswith(
        "+yaml"
    )


def load_document(data: bytes, content_type: str, what: str = "body") -> JSON:
    """One JSON or YAML document (any JSON value) by ``content_type``; DecodeError otherwise."""
    mtype = media_type(content_type)
    if is_json_type(mtype):
        return load_json(data, what)
    if is_yaml_type(mtype):
        if data.lstrip()[:1] in (b"{", b"["):
            # JSON is YAML, but PyYAML trips on some valid JSON (tabs as whitespace).
            try:
                return load_json(data, what)
            except DecodeError:
                pass
        docs = load_yaml_documents(data, what)
        if len(docs) != 1:
            raise DecodeError(f"{what} must hold exactly one document, found {len(docs)}")
        return docs[0]
    raise DecodeError(f"unsupported content type {content_type!r} for the {what}")


# How a message names a value's type: in JSON's words, or in the YAML words lock files are
# written in. bool before int: True is an int to isinstance.
_TYPE_WORDS: tuple[tuple[type | UnionType, str, str], ...] = (
    (bool, "a boolean", "boolean"),
    (int | float, "a number", "number"),
    (str, "a string", "string"),
    (list, "an array", "list"),
    (dict, "an object", "mapping"),
)


def json_type_name(value: object, *, yaml: bool = False) -> str:
    """How a message names the type of ``value``: JSON's words ("a string", "an array", "an
    object"), or with ``yaml`` a lock file's ("string", "list", "mapping")."""
    if value is None:
        return "null"
    for kind, json_word, yaml_word in _TYPE_WORDS:
        if isinstance(value, kind):
            return yaml_word if yaml else json_word
    return type(value).__name__


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) as one space."""
    return " ".join(text.split())
