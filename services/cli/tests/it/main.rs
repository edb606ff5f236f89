//! The `gridbook` binary against the real API: `TestApp` (the API in this process, a fresh
//! database, the shared NATS server) for the commands that need no matching, and one `Stack`
//! (nats-server, the engine binary, the settlement worker, the API and a provider's executor
//! agent) for a job that really runs. Each test runs the built binary as a subprocess with a
//! config folder of its own. `cargo xtask test`'s environment (PostgreSQL, NATS) is required.

mod cli;
mod journey;
mod studio;
