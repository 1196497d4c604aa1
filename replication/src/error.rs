//! The replication error type.

/// What replication can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O call failed; `context` says which.
    #[error("{context}: {source}")]
    Io {
        /// The file, socket or step.
        context: String,
        /// What the system said.
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
    Remote {
        /// Why, as a code.
        code: Code,
        /// The peer's words.
        message: String,
    },
    /// The local store failed or refused.
    #[error("storage: {0}")]
    Db(#[from] ourdb::Error),
    /// A group commit failed: the store takes no more writes until reopened.
    #[error("group commit failed, writes refused: {0}")]
    Poisoned(String),
    /// A connection or call took too long.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The request went out, and its connection ended before the answer
    /// came: the peer may or may not have acted on it.
    #[error("no answer: {0}")]
    Unanswered(String),
    /// A node address or public key that cannot be used.
    #[error("invalid address: {0}")]
    Address(String),
}

impl Error {
    /// The master a `not_master` refusal names (a failover member adds
    /// `; master ADDR (node ID, term T)` when its metadata knows one).
    pub fn master_hint(&self) -> Option<std::net::SocketAddr> {
        let Error::Remote {
            code: Code::NotMaster,
            message,
        } = self
        else {
            return None;
        };
        let (_, rest) = message.rsplit_once("; master ")?;
        rest.split(' ').next()?.parse().ok()
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a node refused a request (`Frame::Failed`). On the wire it is a
/// short text, so a code this build does not know arrives as `Other`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Code {
    /// A conditional write's expectation did not hold.
    Precondition,
    /// A subscriber's log is of another epoch: it needs a snapshot.
    Epoch,
    /// A cursor that is no record boundary of this log, or a log that
    /// differs before it.
    Cursor,
    /// A worker did not reach the requested cursor within the read wait.
    Lagging,
    /// The master has not committed the requested cursor within the wait.
    NotReached,
    /// A watch cursor of a log that a compaction replaced.
    Gone,
    /// A write sent to a worker (or a master already replaced): nothing
    /// was written, the write may go to the new master.
    NotMaster,
    /// The master was replaced after it wrote the record but before the
    /// write was acknowledged: it may or may not survive the failover.
    Indeterminate,
    /// A request the node cannot parse or does not take.
    BadRequest,
    /// The node's store failed to read.
    ReadFailed,
    /// The master's store failed to write (or is poisoned).
    WriteFailed,
    /// The node could not compute its digest.
    DigestFailed,
    /// The lease named does not exist (never granted, revoked or expired).
    NoLease,
    /// A code this build does not know, as sent.
    Other(String),
}

impl Code {
    /// The code's wire text.
    pub fn as_str(&self) -> &str {
        match self {
            Code::Precondition => "precondition",
            Code::Epoch => "epoch",
            Code::Cursor => "cursor",
            Code::Lagging => "lagging",
            Code::NotReached => "not_reached",
            Code::Gone => "gone",
            Code::NotMaster => "not_master",
            Code::Indeterminate => "indeterminate",
            Code::BadRequest => "bad_request",
            Code::ReadFailed => "read_failed",
            Code::WriteFailed => "write_failed",
            Code::DigestFailed => "digest_failed",
            Code::NoLease => "no_lease",
            Code::Other(s) => s,
        }
    }
}

impl From<&str> for Code {
    fn from(s: &str) -> Code {
        [
            Code::Precondition,
            Code::Epoch,
            Code::Cursor,
            Code::Lagging,
            Code::NotReached,
            Code::Gone,
            Code::NotMaster,
            Code::Indeterminate,
            Code::BadRequest,
            Code::ReadFailed,
            Code::WriteFailed,
            Code::DigestFailed,
            Code::NoLease,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
        .unwrap_or_else(|| Code::Other(s.to_string()))
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_not_master_refusal_names_its_master() {
        let e = |code, message: &str| Error::Remote {
            code,
            message: message.into(),
        };
        let hinted = "a worker does not take Set; master [::1]:7000 (node 42, term 3)";
        assert_eq!(
            e(Code::NotMaster, hinted).master_hint(),
            Some("[::1]:7000".parse().unwrap())
        );
        assert_eq!(e(Code::NotMaster, "no master yet").master_hint(), None);
        assert_eq!(e(Code::WriteFailed, hinted).master_hint(), None);
        assert_eq!(
            e(Code::NotMaster, "x; master not-an-address (node 1, term 1)").master_hint(),
            None
        );
    }
}
