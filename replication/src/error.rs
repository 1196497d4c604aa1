//! The replication error type.

/// What replication can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Certificates or keys that cannot be made, read or used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The QUIC connection failed or was refused (a peer of another cluster, for one).
    #[error("QUIC: {0}")]
    Quic(String),
    /// The peer sent something this protocol does not allow.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The peer answered with an error.
    #[error("{code}: {message}")]
    Remote { code: String, message: String },
    #[error("storage: {0}")]
    Db(#[from] ourdb::Error),
    /// A group commit failed: the store takes no more writes until reopened.
    #[error("group commit failed, writes refused: {0}")]
    Poisoned(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("invalid address: {0}")]
    Address(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: context(),
            source,
        })
    }
}
