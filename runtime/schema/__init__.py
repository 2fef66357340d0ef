"""The package manifest schema, and a validator for the JSON-schema subset it uses.

Hand-written so that the base install (what ``lipsync-serve`` needs) stays free of ``jsonschema``.
``manifest.schema.json`` needs a handful of draft 2020-12 keywords; this module
implements exactly those, with jsonschema's error paths and messages. Any other
keyword is refused rather than ignored, so a later schema edit cannot silently
weaken validation.
``tests/runtime/test_schema.py`` checks it against ``jsonschema.Draft202012Validator``.
"""

from __future__ import annotations

import json
import numbers
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

# Keywords that only name or document a schema: they never fail an instance.
_ANNOTATIONS = frozenset({"$schema", "$id", "$defs", "title", "description"})

_TYPES = {
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
    "string": lambda x: isinstance(x, str),
    "null": lambda x: x is None,
    "boolean": lambda x: isinstance(x, bool),
    # Python's bool is an int; JSON's is not a number at all.
    "number": lambda x: isinstance(x, numbers.Number) and not isinstance(x, bool),
    # JSON has one number type, so 3.0 is an integer too.
    "integer": lambda x: (isinstance(x, int) and not isinstance(x, bool))
    or (isinstance(x, float) and x.is_integer()),
}


class SchemaDefinitionError(ValueError):
    """The schema uses a keyword or form this validator does not implement."""


@dataclass(frozen=True)
class SchemaError:
    """One way an instance fails its schema.

    Attributes
    ----------
    path : tuple
        Keys and list indices from the instance root to the failing value (for
        ``required`` and ``additionalProperties``, to the object holding them).
    message : str
        One line: what was found and what was expected.
    """

    path: tuple
    message: str


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: ``1 == 1.0`` but ``True != 1``, also inside lists and objects."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_equal, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return a == b


def _resolve(ref: str, root: dict) -> dict:
    """Follow a local JSON pointer such as ``#/$defs/range`` from the root schema."""
    node: Any = root
    if not ref.startswith("#/"):
        raise SchemaDefinitionError(f"$ref {ref!r}: only local '#/...' references are supported")
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            raise SchemaDefinitionError(f"$ref {ref!r} does not resolve in the schema")
        node = node[part]
    return node


def _additional(extra, x, schema, root, path):
    if not isinstance(x, dict):
        return
    known, patterns = schema.get("properties", {}), schema.get("patternProperties", {})
    extras = [k for k in x if k not in known and not any(re.search(p, k) for p in patterns)]
    if isinstance(extra, dict):
        for k in extras:
            yield from _descend(x[k], extra, root, (*path, k))
    elif extra is False and extras:
        names, one = ", ".join(map(repr, sorted(extras))), len(extras) == 1
        if patterns:  # jsonschema's wording, so messages match whichever validator ran
            regexes = ", ".join(map(repr, sorted(patterns)))
            yield SchemaError(path, f"{names} {'does' if one else 'do'} not match any of the regexes: {regexes}")
        else:
            verb = "was" if one else "were"
            yield SchemaError(path, f"Additional properties are not allowed ({names} {verb} unexpected)")


def _type(types, x, schema, root, path):
    types = [types] if isinstance(types, str) else types
    if not any(_TYPES[t](x) for t in types):
        yield SchemaError(path, f"{x!r} is not of type {', '.join(map(repr, types))}")


def _check(test, message):
    """A keyword that tests one value when it has the right JSON type."""
    def keyword(limit, x, schema, root, path):
        if test(x, limit):
            yield SchemaError(path, message.format(x=x, limit=limit))
    return keyword


_num, _arr, _obj = _TYPES["number"], _TYPES["array"], _TYPES["object"]

# Each keyword yields the SchemaErrors of instance ``x`` at ``path``; keywords
# that apply to one JSON type pass other types, as JSON schema requires.
_KEYWORDS = {
    "type": _type,
    "additionalProperties": _additional,
    "properties": lambda props, x, s, root, path: (
        e for k, sub in props.items() if _obj(x) and k in x for e in _descend(x[k], sub, root, (*path, k))),
    "patternProperties": lambda pats, x, s, root, path: (
        e for p, sub in pats.items() if _obj(x) for k in x if re.search(p, k)
        for e in _descend(x[k], sub, root, (*path, k))),
    "required": lambda names, x, s, root, path: (
        SchemaError(path, f"{k!r} is a required property") for k in names if _obj(x) and k not in x),
    "items": lambda sub, x, s, root, path: (
        e for i, v in enumerate(x if _arr(x) else ()) for e in _descend(v, sub, root, (*path, i))),
    "$ref": lambda ref, x, s, root, path: _descend(x, _resolve(ref, root), root, path),
    "minItems": _check(lambda x, n: _arr(x) and len(x) < n, "{x!r} is too short"),
    "maxItems": _check(lambda x, n: _arr(x) and len(x) > n, "{x!r} is too long"),
    "minimum": _check(lambda x, m: _num(x) and x < m, "{x!r} is less than the minimum of {limit!r}"),
    "maximum": _check(lambda x, m: _num(x) and x > m, "{x!r} is greater than the maximum of {limit!r}"),
    "exclusiveMinimum": _check(lambda x, m: _num(x) and x <= m,
                               "{x!r} is less than or equal to the minimum of {limit!r}"),
    "pattern": _check(lambda x, p: isinstance(x, str) and not re.search(p, x), "{x!r} does not match {limit!r}"),
    "const": _check(lambda x, c: not _equal(x, c), "{limit!r} was expected"),
    "enum": _check(lambda x, vs: not any(_equal(x, v) for v in vs), "{x!r} is not one of {limit!r}"),
}


def _descend(x: Any, schema: dict, root: dict, path: tuple) -> Iterator[SchemaError]:
    # Keywords run in the schema's order, as jsonschema's do, so the first error matches.
    for key, value in schema.items():
        if key not in _ANNOTATIONS:
            if key not in _KEYWORDS:
                raise SchemaDefinitionError(f"schema keyword {key!r} is not supported by runtime.schema")
            yield from _KEYWORDS[key](value, x, schema, root, path)


def check_schema(schema: Any, root: dict | None = None) -> None:
    """Refuse a schema that uses anything this validator does not implement.

    Raises
    ------
    SchemaDefinitionError
        Naming the unknown keyword, type, pattern or reference.
    """
    root = schema if root is None else root
    if not isinstance(schema, dict):
        raise SchemaDefinitionError(f"subschema {schema!r}: only object schemas are supported")
    unknown = sorted(schema.keys() - _ANNOTATIONS - _KEYWORDS.keys())
    if unknown:
        raise SchemaDefinitionError(f"schema keyword {unknown[0]!r} is not supported by runtime.schema")
    for key in ("properties", "patternProperties", "$defs"):
        for sub in schema.get(key, {}).values():
            check_schema(sub, root)
    if "items" in schema:
        check_schema(schema["items"], root)
    if not isinstance(schema.get("additionalProperties", False), bool):
        check_schema(schema["additionalProperties"], root)
    types = schema.get("type", [])
    if set([types] if isinstance(types, str) else types) - _TYPES.keys():
        raise SchemaDefinitionError(f"schema type {types!r}: not a JSON-schema type")
    for pattern in [*schema.get("patternProperties", {}), *[schema[k] for k in ("pattern",) if k in schema]]:
        try:  # a bad regex fails here, not on the first manifest that reaches it
            re.compile(pattern)
        except re.error as exc:
            raise SchemaDefinitionError(f"pattern {pattern!r}: {exc}") from None
    if "$ref" in schema:
        _resolve(schema["$ref"], root)


def load_schema(path: str | Path) -> dict:
    """Read a JSON schema and check that this validator implements all of it."""
    schema = json.loads(Path(path).read_text(encoding="utf-8"))
    check_schema(schema)
    return schema


def iter_errors(instance: Any, schema: dict) -> Iterator[SchemaError]:
    """Yield every way ``instance`` fails ``schema`` (draft 2020-12 semantics).

    Raises
    ------
    SchemaDefinitionError
        On reaching a keyword this module does not implement (``load_schema``
        finds those up front).
    """
    yield from _descend(instance, schema, schema, ())
