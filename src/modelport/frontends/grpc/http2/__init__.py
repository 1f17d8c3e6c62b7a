"""A small HTTP/2 server side, just what gRPC needs (RFC 9113, HPACK via the hpack package)."""
