//! Integration tests: the real app (port 0) against real PostgreSQL and NATS.
