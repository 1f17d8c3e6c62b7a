"""Serving from message queues: the v2 request and response bodies over Redis Streams, RabbitMQ
and NATS JetStream, at least once (docs/architecture.md, "Queues")."""
