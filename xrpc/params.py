"""A query's parameters, checked and converted as its lexicon says: types, formats, bounds, defaults,
required ones. Anything else is one ``InvalidRequest`` that says which parameter is wrong and why."""

from collections.abc import Callable
from typing import Any

from django.http import QueryDict

from protocol import syntax
from xrpc import lexicons
from xrpc.errors import invalid_request

# Longest value of any parameter this API reads (a cursor, a search query, an AT-URI); longer is refused.
VALUE_MAX_CHARS = 3000
FORMATS: dict[str, Callable[[object], bool]] = {
    "did": syntax.is_did,
    "handle": syntax.is_handle,
    "at-identifier": syntax.is_at_identifier,
    "at-uri": syntax.is_at_uri,
    "nsid": syntax.is_nsid,
    "cid": syntax.is_cid,
    "datetime": syntax.is_datetime,
    "uri": syntax.is_uri,
    "language": syntax.is_language,
    "tid": syntax.is_tid,
    "record-key": syntax.is_record_key,
}


def parse(nsid: str, query: QueryDict) -> dict[str, Any]:
    """The parameters of a call of ``nsid``: every declared one, with its default when absent (None when
    it has none). Undeclared parameters are ignored, as XRPC servers do."""
    schema = lexicons.query_parameters(nsid)
    required = set(schema.get("required", ()))
    values: dict[str, Any] = {}
    for name, spec in schema.get("properties", {}).items():
        raw = query.getlist(name)
        if not raw:
            if name in required:
                raise invalid_request(f'Error: Params must have the property "{name}"')
            values[name] = spec.get("default", [] if spec.get("type") == "array" else None)
            continue
        for text in raw:
            if "\x00" in text or len(text) > VALUE_MAX_CHARS:
                raise invalid_request(f"Error: {name} holds a NUL character or is too long")
        if spec.get("type") == "array":
            max_length = spec.get("maxLength")
            if max_length is not None and len(raw) > max_length:
                raise invalid_request(f"Error: {name} must not have more than {max_length} elements")
            values[name] = [_value(name, spec.get("items", {}), text) for text in raw]
        else:
            if len(raw) > 1:
                raise invalid_request(f"Error: {name} takes one value, got {len(raw)}")
            values[name] = _value(name, spec, raw[0])
    return values


def _value(name: str, spec: dict[str, Any], text: str) -> Any:
    kind = spec.get("type")
    if kind == "integer":
        return _integer(name, spec, text)
    if kind == "boolean":
        if text not in ("true", "false"):
            raise invalid_request(f"Error: {name} must be a boolean (true or false)")
        return text == "true"
    return _string(name, spec, text)


def _integer(name: str, spec: dict[str, Any], text: str) -> int:
    if not (text.isascii() and text.lstrip("-").isdigit()) or len(text) > 20:
        raise invalid_request(f"Error: {name} must be an integer")
    value = int(text)
    minimum, maximum = spec.get("minimum"), spec.get("maximum")
    if minimum is not None and value < minimum:
        raise invalid_request(f"Error: {name} can not be less than {minimum}")
    if maximum is not None and value > maximum:
        raise invalid_request(f"Error: {name} can not be greater than {maximum}")
    return value


def _string(name: str, spec: dict[str, Any], text: str) -> str:
    max_length = spec.get("maxLength")
    if max_length is not None and len(text.encode()) > max_length:
        raise invalid_request(f"Error: {name} must not be longer than {max_length} bytes")
    if "enum" in spec and text not in spec["enum"]:
        raise invalid_request(f"Error: {name} must be one of {', '.join(spec['enum'])}")
    fmt = spec.get("format")
    if fmt is not None:
        check = FORMATS.get(fmt)
        if check is not None and not check(text):
            raise invalid_request(f"Error: {name} must be a valid {fmt}")
        if fmt in ("handle", "at-identifier") and not text.startswith("did:"):
            return text.lower()
    return text
