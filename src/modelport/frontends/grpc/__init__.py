"""gRPC frontend: the v2 `inference.GRPCInferenceService`.

The generated modules in `generated/` register `inference.*` messages in protobuf's default pool, as
tritonclient's own copies do; never import both in one process (tests talk to the server process
with tritonclient and check our stubs from a subprocess).
"""
