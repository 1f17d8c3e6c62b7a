"""Protocol-agnostic core: tensors, errors, configuration, runtimes contract, model manager, server.

Nothing in this package imports a web framework, grpc or prometheus: the frontends translate wire
formats into the calls declared here, and observability plugs in through the small protocols below.
"""
