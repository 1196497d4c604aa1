//! Master-to-worker replication for ourkv.
//!
//! Not built yet: the protocol (QUIC with mutual TLS, log shipping from the
//! master's journal) is the next piece of work. Until then the crate only
//! exists so that the workspace has its final shape.
