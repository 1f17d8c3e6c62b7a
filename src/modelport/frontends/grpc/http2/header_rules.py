"""Whether a request's header list is well formed (RFC 9113 8.2 and 8.3).

A malformed request is a stream error of type PROTOCOL_ERROR (RFC 9113 8.1.1): that stream is
reset, the connection lives on. Checked once per distinct header block (headers.HeaderDecoder
caches the answer with the decoded list), and within a new block only the fields the connection
has not sent before are looked at closely (about 1 us for a typical gRPC request).
"""

from __future__ import annotations

Headers = list[tuple[bytes, bytes]]

_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
_TOKEN = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
"""Characters of a field name (RFC 9110 5.6.2 tchar), lowercase as HTTP/2 requires."""
_EDGE_SPACE = (0x20, 0x09)


_PSEUDO_BITS = {b":method": 1, b":scheme": 2, b":path": 4, b":authority": 8}
_REQUIRED_BITS = 7  # :method, :scheme and :path
_KNOWN_FIELDS = 1024
"""Fields (name and value) found well formed, per connection, before the set starts again."""


def request_problem(headers: Headers, known: set[tuple[bytes, bytes]]) -> str | None:
    """Why `headers` is not a well-formed request header list, or None. `known` holds the
    connection's fields already found well formed: only new ones are looked at closely."""
    seen = 0
    regular = False
    for field in headers:
        name = field[0]
        pseudo = name[:1] == b":"
        if pseudo:
            bit = _PSEUDO_BITS.get(name)
            if regular:
                return "a pseudo-header after a regular field"
            if bit is None:
                return f"pseudo-header {_shown(name)} is not allowed in a request"
            if seen & bit:
                return f"pseudo-header {_shown(name)} appears twice"
            seen |= bit
        else:
            regular = True
        if field not in known:
            problem = _value_problem(*field) if pseudo else _regular_problem(field)
            if problem is not None:
                return problem
            if len(known) >= _KNOWN_FIELDS:
                known.clear()
            known.add(field)
    if seen & _REQUIRED_BITS != _REQUIRED_BITS:
        missing = [name for name, bit in _PSEUDO_BITS.items() if bit & _REQUIRED_BITS & ~seen]
        return f"pseudo-header {missing[0].decode()} is missing"
    return None


def _regular_problem(field: tuple[bytes, bytes]) -> str | None:
    name, value = field
    problem = _field_problem(name)
    if problem is None and name == b"te" and value != b"trailers":
        problem = "field te may only be 'trailers'"
    return problem or _value_problem(name, value)


def _value_problem(name: bytes, value: bytes) -> str | None:
    if b"\x00" in value or b"\r" in value or b"\n" in value:
        return f"the value of {_shown(name)} holds NUL, CR or LF"
    if value and (value[0] in _EDGE_SPACE or value[-1] in _EDGE_SPACE):
        return f"the value of {_shown(name)} starts or ends with whitespace"
    return None


def trailer_problem(headers: Headers) -> str | None:
    for name, value in headers:
        if name[:1] == b":":
            return "trailers cannot hold pseudo-headers"
        problem = _field_problem(name)
        if problem is not None:
            return problem
        problem = _value_problem(name, value)
        if problem is not None:
            return problem
    return None


def _field_problem(name: bytes) -> str | None:
    if not name:
        return "an empty field name"
    if name.translate(None, _TOKEN):
        return f"field name {_shown(name)} is not lowercase token characters"
    if name in _CONNECTION_SPECIFIC:
        return f"connection-specific field {_shown(name)} is not allowed in HTTP/2"
    return None


def _shown(name: bytes) -> str:
    return repr(name[:40].decode("latin-1"))
