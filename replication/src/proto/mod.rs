//! Replication decisions as pure state machines: no tokio, no quinn, no
//! clock of their own. Events in, decisions out; the async nodes in
//! `node.rs` only move bytes and timers and apply what these decide, so the
//! rules are tested without sockets, runtimes or directories.

pub mod election;
pub mod follower;
pub mod followers;
pub mod lag;
pub mod meta;
pub mod read_index;
pub mod shipping;

pub use follower::Follower;
pub use followers::{Followers, Progress, Transition};
pub use read_index::ReadIndexBatch;

#[cfg(test)]
mod tests {
    /// The modules here must stay free of I/O and async runtimes.
    #[test]
    fn no_runtime_or_network_in_the_core() {
        for (name, src) in [
            ("mod.rs", include_str!("mod.rs")),
            ("followers.rs", include_str!("followers.rs")),
            ("lag.rs", include_str!("lag.rs")),
            ("read_index.rs", include_str!("read_index.rs")),
            ("follower.rs", include_str!("follower.rs")),
            ("shipping.rs", include_str!("shipping.rs")),
            ("meta.rs", include_str!("meta.rs")),
            ("election.rs", include_str!("election.rs")),
        ] {
            // Split so that this test's own text does not match.
            for banned in [
                concat!("tok", "io::"),
                concat!("qui", "nn::"),
                concat!("Instant", "::now"),
                concat!("std::", "fs"),
                concat!("std::", "net::Udp"),
            ] {
                assert!(!src.contains(banned), "{name} uses {banned}");
            }
        }
    }
}
