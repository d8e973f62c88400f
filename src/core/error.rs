//! What went wrong in a replica operation, said in the replica's terms. The etcd API
//! maps it to etcd's codes and strings (`api::errors`), the mesh authority to its own
//! envelope, and the peer protocol carries it between members as a typed message
//! (`core::forward`), never as a parsed string.

use std::sync::Arc;

use crate::mvcc::validate::InvalidRequest;
use crate::mvcc::MvccError;
use crate::raft::codec::FormatError;
use crate::raft::proposer::ProposeError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum CoreError {
    /// The state machine refused the command, or a read of the state failed.
    #[error(transparent)]
    Apply(#[from] MvccError),
    #[error("request is too large ({size} bytes; the limit is {limit})")]
    RequestTooLarge { size: usize, limit: usize },
    /// A unary read whose rows and reply need more memory than the whole read budget
    /// (`limits.read_memory_bytes`): it could never be served in one reply.
    #[error("the reply needs at least {needed} bytes of memory, more than limits.read_memory_bytes ({budget})")]
    ReadTooLarge { needed: u64, budget: u64 },
    /// The read budget stayed taken by other reads for longer than this one may wait.
    #[error(
        "reads in progress hold limits.read_memory_bytes ({budget}); this one needs at least {needed} bytes and waited {waited_ms} ms"
    )]
    ReadBudgetBusy { needed: u64, budget: u64, waited_ms: u64 },
    #[error("no leader")]
    NoLeader,
    #[error("leader changed")]
    LeaderChanged,
    /// The outcome is unknown: the request may or may not have been applied.
    #[error("request timed out")]
    Timeout,
    #[error("server stopped")]
    Stopped,
    #[error("member not found")]
    MemberNotFound,
    /// This cluster is a standby: it serves reads only until promoted.
    #[error("rpc not supported for a standby cluster (it only follows its primary; `netsy standby promote` makes it writable)")]
    Standby,
    #[error("can only promote a learner member")]
    MemberNotLearner,
    #[error("bad leader transferee")]
    BadLeaderTransferee,
    #[error("leader transfer took too long")]
    LeaderTransferTimeout,
    #[error("cannot remove the last voter")]
    LastVoter,
    /// Raft failed in a way a client cannot act on.
    #[error("raft")]
    Raft(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// A member sent bytes this member cannot decode.
    #[error("undecodable message from a peer")]
    Format(#[source] Arc<FormatError>),
    /// The leader failed a forwarded request with an internal error; its description,
    /// causes included.
    #[error("on the leader: {0}")]
    Leader(String),
    /// The state machine answered a command with the result of another kind of command.
    #[error("a {wanted} was answered with {got}")]
    UnexpectedResult { wanted: &'static str, got: String },
    /// A local file the operation needs (such as a snapshot's scratch copy).
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A blocking task of the operation panicked or was cancelled.
    #[error("background task failed")]
    Task(#[source] Arc<tokio::task::JoinError>),
}

impl CoreError {
    /// A client may retry at once (with the new leader): the request did not apply.
    pub fn is_leader_change(&self) -> bool {
        matches!(self, CoreError::NoLeader | CoreError::LeaderChanged)
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> CoreError {
        CoreError::Io {
            what: what.into(),
            source: Arc::new(source),
        }
    }
}

impl From<ProposeError> for CoreError {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::NoLeader => CoreError::NoLeader,
            ProposeError::LeaderChanged => CoreError::LeaderChanged,
            ProposeError::Stopped => CoreError::Stopped,
            ProposeError::NoQuorum => CoreError::Timeout,
            ProposeError::Internal(source) => CoreError::Raft(source),
        }
    }
}

impl From<InvalidRequest> for CoreError {
    fn from(e: InvalidRequest) -> Self {
        CoreError::Apply(MvccError::Invalid(e))
    }
}

impl From<FormatError> for CoreError {
    fn from(e: FormatError) -> Self {
        CoreError::Format(Arc::new(e))
    }
}

impl From<tokio::task::JoinError> for CoreError {
    fn from(e: tokio::task::JoinError) -> Self {
        CoreError::Task(Arc::new(e))
    }
}
