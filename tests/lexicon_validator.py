"""A small, strict validator of JSON values against the official lexicons in ``xrpc/lexicons/``, for the
read API's tests: ``output_errors(nsid, body)`` checks a query's response against ``defs.main.output.schema``.

Every check returns a list of error strings, each starting with the JSON path of the value at fault (``$``
is the root); an empty list means valid. Refs (``nsid#name``, local ``#name``, bare ``nsid`` for main) are
resolved through ``xrpc.lexicons.documents()``, relative to the document that holds the schema. Objects may
carry keys their schema does not declare (lexicons evolve by adding fields); everything declared is checked:
required keys, nulls only where ``nullable`` says, string bytes, graphemes, formats (with the project's
``protocol.syntax``), closed enums and consts, integer bounds, array lengths, union members by ``$type``.
"""

import re
import unicodedata
from typing import Any

from protocol import syntax
from xrpc.lexicons import documents
from xrpc.params import FORMATS

_MIME = re.compile(r"[a-z0-9.+-]+/[a-z0-9.+*-]+", re.IGNORECASE)


class SchemaError(Exception):
    """The lexicon itself is unusable (an unknown ref or type): a bug of the test or of the lexicon files."""


def qualified(ref: str, context: str) -> str:
    """``nsid#name`` for a ref as written in document ``context`` (``#main`` spelled out)."""
    nsid, _, name = ref.partition("#")
    return f"{nsid or context}#{name or 'main'}"


def type_name(value: str) -> str:
    """A ``$type`` in the canonical ``nsid#name`` form (``nsid`` alone means main)."""
    return value if "#" in value else f"{value}#main"


def definition(ref: str, context: str) -> tuple[dict[str, Any], str]:
    """The definition a ref names, and the NSID of the document holding it (the context of its own refs)."""
    nsid, _, name = qualified(ref, context).partition("#")
    doc = documents().get(nsid)
    if doc is None or name not in doc["defs"]:
        raise SchemaError(f"unknown ref {ref!r} (in {context})")
    return doc["defs"][name], nsid


def output_schema(nsid: str) -> tuple[dict[str, Any], str]:
    main, context = definition(nsid, nsid)
    if main.get("type") != "query":
        raise SchemaError(f"{nsid} is not a query")
    output = main.get("output") or {}
    if output.get("encoding") != "application/json" or "schema" not in output:
        raise SchemaError(f"{nsid} has no JSON output schema")
    return output["schema"], context


def output_errors(nsid: str, body: Any, *, records: bool = False) -> list[str]:
    """Errors of a query's response body against its lexicon's output schema. With ``records``, values of
    ``unknown`` fields whose ``$type`` names a record lexicon are checked against that lexicon too."""
    schema, context = output_schema(nsid)
    return Validator(records=records).check(body, schema, context, "$")


def errors(value: Any, ref: str, *, records: bool = False) -> list[str]:
    """Errors of a value against the definition ``ref`` names (``nsid#name`` or ``nsid``)."""
    schema, context = definition(ref, ref.partition("#")[0])
    return Validator(records=records).check(value, schema, context, "$")


def graphemes(text: str) -> int:
    """An approximate count of extended grapheme clusters (Python has no segmentation): combining marks,
    variation selectors, skin tones and tag characters extend the cluster before them, a ZWJ joins the next
    code point to it, and regional indicators pair into one flag."""
    count = 0
    join_next = False
    pending_flag = False
    for char in text:
        point = ord(char)
        if join_next:
            join_next = False
            continue
        if point == 0x200D:
            join_next = True
            continue
        if (unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Mc")
                or 0xFE00 <= point <= 0xFE0F or 0x1F3FB <= point <= 0x1F3FF or 0xE0020 <= point <= 0xE007F):
            if count == 0:
                count = 1
            continue
        if 0x1F1E6 <= point <= 0x1F1FF:
            if pending_flag:
                pending_flag = False
                continue
            pending_flag = True
        else:
            pending_flag = False
        count += 1
    return count


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class Validator:
    def __init__(self, *, records: bool = False) -> None:
        self.records = records

    def check(self, value: Any, schema: dict[str, Any], context: str, path: str) -> list[str]:
        kind = schema.get("type")
        method = getattr(self, "_" + str(kind).replace("-", "_"), None)
        if method is None:
            raise SchemaError(f"unsupported lexicon type {kind!r} at {path} (in {context})")
        return method(value, schema, context, path)

    @staticmethod
    def _expect(value: Any, expected: str, path: str) -> list[str]:
        found = _json_type(value)
        return [] if found == expected else [f"{path}: expected {expected}, got {found}"]

    # -- Containers --------------------------------------------------------------------------------

    def _object(self, value: Any, schema: dict[str, Any], context: str, path: str) -> list[str]:
        if wrong := self._expect(value, "object", path):
            return wrong
        found: list[str] = []
        properties = schema.get("properties", {})
        nullable = set(schema.get("nullable", ()))
        for name in schema.get("required", ()):
            if name not in value:
                found.append(f"{path}: missing required property {name!r}")
        for name, spec in properties.items():
            if name not in value:
                continue
            child = f"{path}.{name}"
            if value[name] is None:
                if name not in nullable:
                    found.append(f"{child}: null but not nullable")
                continue
            found += self.check(value[name], spec, context, child)
        if "$type" in value and not isinstance(value["$type"], str):
            found.append(f"{path}.$type: expected string, got {_json_type(value['$type'])}")
        return found

    def _record(self, value: Any, schema: dict[str, Any], context: str, path: str) -> list[str]:
        return self.check(value, schema["record"], context, path)

    def _ref(self, value: Any, schema: dict[str, Any], context: str, path: str) -> list[str]:
        target, target_context = definition(schema["ref"], context)
        if target.get("type") == "token":  # a value of a token is the token's name
            name = qualified(schema["ref"], context).removesuffix("#main")
            return [] if value == name else [f"{path}: {value!r:.80} is not the token {name}"]
        found = self.check(value, target, target_context, path)
        # A $type is optional outside unions, but when present it must name the def the ref points to.
        if (isinstance(value, dict) and isinstance(value.get("$type"), str)
                and target.get("type") in ("object", "record")
                and type_name(value["$type"]) != qualified(schema["ref"], context)):
            found.append(f"{path}.$type: {value['$type']!r} is not {qualified(schema['ref'], context)}")
        return found

    def _union(self, value: Any, schema: dict[str, Any], context: str, path: str) -> list[str]:
        if wrong := self._expect(value, "object", path):
            return wrong
        member = value.get("$type")
        if not isinstance(member, str) or not member:
            return [f"{path}: union member without a $type"]
        refs = {qualified(ref, context): ref for ref in schema.get("refs", ())}
        ref = refs.get(type_name(member))
        if ref is None:
            if schema.get("closed"):
                return [f"{path}.$type: {member!r} is not one of the closed union {sorted(refs)}"]
            return []  # an open union accepts members it does not know
        target, target_context = definition(ref, context)
        return self.check(value, target, target_context, path)

    def _array(self, value: Any, schema: dict[str, Any], context: str, path: str) -> list[str]:
        if wrong := self._expect(value, "array", path):
            return wrong
        found: list[str] = []
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            found.append(f"{path}: {len(value)} items, more than maxLength {schema['maxLength']}")
        if "minLength" in schema and len(value) < schema["minLength"]:
            found.append(f"{path}: {len(value)} items, fewer than minLength {schema['minLength']}")
        items = schema.get("items")
        if items is None:
            raise SchemaError(f"array without items at {path} (in {context})")
        for index, item in enumerate(value):
            found += self.check(item, items, context, f"{path}[{index}]")
        return found

    # -- Scalars -----------------------------------------------------------------------------------

    def _string(self, value: Any, schema: dict[str, Any], context: str, path: str) -> list[str]:
        if wrong := self._expect(value, "string", path):
            return wrong
        found: list[str] = []
        size = len(value.encode("utf-8", "surrogatepass"))
        if "maxLength" in schema and size > schema["maxLength"]:
            found.append(f"{path}: {size} UTF-8 bytes, more than maxLength {schema['maxLength']}")
        if "minLength" in schema and size < schema["minLength"]:
            found.append(f"{path}: {size} UTF-8 bytes, fewer than minLength {schema['minLength']}")
        if "maxGraphemes" in schema and graphemes(value) > schema["maxGraphemes"]:
            found.append(f"{path}: more than maxGraphemes {schema['maxGraphemes']}")
        if "minGraphemes" in schema and graphemes(value) < schema["minGraphemes"]:
            found.append(f"{path}: fewer than minGraphemes {schema['minGraphemes']}")
        if "enum" in schema and value not in schema["enum"]:
            found.append(f"{path}: {value[:80]!r} is not one of {schema['enum']}")
        if "const" in schema and value != schema["const"]:
            found.append(f"{path}: {value[:80]!r} is not the const {schema['const']!r}")
        fmt = schema.get("format")
        if fmt is not None:
            check = FORMATS.get(fmt)
            if check is None:
                raise SchemaError(f"unknown string format {fmt!r} at {path} (in {context})")
            if not check(value):
                found.append(f"{path}: {value[:80]!r} is not a valid {fmt}")
        return found  # knownValues are open: any other string is allowed

    def _integer(self, value: Any, schema: dict[str, Any], context: str, path: str) -> list[str]:
        if wrong := self._expect(value, "integer", path):
            return wrong
        found: list[str] = []
        if "minimum" in schema and value < schema["minimum"]:
            found.append(f"{path}: {value} is less than minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            found.append(f"{path}: {value} is more than maximum {schema['maximum']}")
        if "enum" in schema and value not in schema["enum"]:
            found.append(f"{path}: {value} is not one of {schema['enum']}")
        if "const" in schema and value != schema["const"]:
            found.append(f"{path}: {value} is not the const {schema['const']}")
        return found

    def _boolean(self, value: Any, schema: dict[str, Any], context: str, path: str) -> list[str]:
        if wrong := self._expect(value, "boolean", path):
            return wrong
        if "const" in schema and value is not schema["const"]:
            return [f"{path}: {value} is not the const {schema['const']}"]
        return []

    def _token(self, value: Any, schema: dict[str, Any], context: str, path: str) -> list[str]:
        # Reached without a ref (whose name _ref checks): any token-like name, ``nsid#name``.
        if wrong := self._expect(value, "string", path):
            return wrong
        nsid, _, name = value.partition("#")
        return [] if syntax.is_nsid(nsid) and name else [f"{path}: {value[:80]!r} is not a token reference"]

    def _unknown(self, value: Any, schema: dict[str, Any], context: str, path: str) -> list[str]:
        if wrong := self._expect(value, "object", path):
            return wrong
        kind = value.get("$type")
        if self.records and isinstance(kind, str) and "#" not in kind:
            target = documents().get(kind, {}).get("defs", {}).get("main")
            if target is not None and target.get("type") == "record":
                return self.check(value, target, kind, path)
        return []

    # -- Data model types --------------------------------------------------------------------------

    def _blob(self, value: Any, schema: dict[str, Any], context: str, path: str) -> list[str]:
        if wrong := self._expect(value, "object", path):
            return wrong
        found: list[str] = []
        if "ref" in value or value.get("$type") == "blob":
            if value.get("$type") != "blob":
                found.append(f"{path}.$type: a blob has $type 'blob'")
            found += self._cid_link(value.get("ref"), {}, context, f"{path}.ref")
            size = value.get("size")
            if type(size) is not int or size < 0:
                found.append(f"{path}.size: expected a non-negative integer, got {size!r}")
            elif "maxSize" in schema and size > schema["maxSize"]:
                found.append(f"{path}.size: {size} is more than maxSize {schema['maxSize']}")
        elif not syntax.is_cid(value.get("cid")):  # the legacy form: {"cid", "mimeType"}
            found.append(f"{path}: neither a blob ({{$type, ref, mimeType, size}}) nor a legacy blob ({{cid}})")
        mime = value.get("mimeType")
        if not isinstance(mime, str) or _MIME.fullmatch(mime) is None:
            found.append(f"{path}.mimeType: {mime!r} is not a MIME type")
        elif "accept" in schema and not any(
                pattern == "*/*" or pattern == mime or (pattern.endswith("/*") and mime.startswith(pattern[:-1]))
                for pattern in schema["accept"]):
            found.append(f"{path}.mimeType: {mime!r} is not accepted ({schema['accept']})")
        return found

    def _cid_link(self, value: Any, schema: dict[str, Any], context: str, path: str) -> list[str]:
        if wrong := self._expect(value, "object", path):
            return wrong
        if set(value) != {"$link"} or not syntax.is_cid(value["$link"]):
            return [f"{path}: a CID link is {{'$link': cid}}, got {value!r:.80}"]
        return []

    def _bytes(self, value: Any, schema: dict[str, Any], context: str, path: str) -> list[str]:
        if wrong := self._expect(value, "object", path):
            return wrong
        if set(value) != {"$bytes"} or not isinstance(value["$bytes"], str):
            return [f"{path}: bytes are {{'$bytes': base64}}, got {value!r:.80}"]
        if re.fullmatch(r"[A-Za-z0-9+/]*={0,2}", value["$bytes"]) is None:
            return [f"{path}.$bytes: not base64"]
        size = len(value["$bytes"].rstrip("=")) * 3 // 4
        found = []
        if "maxLength" in schema and size > schema["maxLength"]:
            found.append(f"{path}: {size} bytes, more than maxLength {schema['maxLength']}")
        if "minLength" in schema and size < schema["minLength"]:
            found.append(f"{path}: {size} bytes, fewer than minLength {schema['minLength']}")
        return found
