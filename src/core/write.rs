//! Writes: every one is a command replicated through Raft, from any member (a follower
//! forwards it to the leader), answered with its own response type once applied here.

use std::time::Duration;

use tokio::time::Instant;

use super::route::{Leader, REQUEST_TIMEOUT};
use super::{CoreError, Held, Replica};
use crate::config::Durability;
use crate::mvcc::validate::InvalidRequest;
use crate::mvcc::{Command, CommandResult};
use crate::proto::etcdserverpb::{
    AlarmMember, AlarmType, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantResponse,
    LeaseRevokeResponse, PutRequest, PutResponse, ResponseHeader, TxnRequest, TxnResponse,
};

/// How long a write waits for its segment upload in `object-storage` durability (its
/// apply waits for the upload too).
const ARCHIVE_WAIT: Duration = Duration::from_secs(10);

/// A command's response type: the one place an applied result is matched to the
/// command that asked for it.
trait Answer: Sized {
    const WANTED: &'static str;
    fn from_result(r: CommandResult) -> Result<Self, CommandResult>;
    fn header(&mut self) -> &mut Option<ResponseHeader>;
}

macro_rules! answer {
    ($($variant:ident => $ty:ty, $name:literal;)*) => {$(
        impl Answer for $ty {
            const WANTED: &'static str = $name;
            fn from_result(r: CommandResult) -> Result<Self, CommandResult> {
                match r {
                    CommandResult::$variant(resp) => Ok(resp),
                    other => Err(other),
                }
            }
            fn header(&mut self) -> &mut Option<ResponseHeader> {
                &mut self.header
            }
        }
    )*};
}

answer! {
    Put => PutResponse, "put";
    DeleteRange => DeleteRangeResponse, "delete";
    Txn => TxnResponse, "txn";
    Compact => CompactionResponse, "compaction";
    LeaseGrant => LeaseGrantResponse, "lease grant";
    LeaseRevoke => LeaseRevokeResponse, "lease revoke";
}

impl Replica {
    pub async fn put(&self, req: PutRequest) -> Result<PutResponse, CoreError> {
        self.check_quota().await?;
        self.write(Command::Put(req)).await
    }

    pub async fn delete_range(&self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse, CoreError> {
        self.write(Command::DeleteRange(req)).await
    }

    /// A txn: replicated when a branch writes (checking the quota when one puts),
    /// otherwise a read (linearizable unless every range in it is serializable).
    ///
    /// A read-only txn's ranges are charged to the read budget (`Held::memory`). Those of
    /// a txn that writes are not: the state machine computes them on every member and must
    /// give each the same answer whatever its memory (kube-apiserver's writing txns read
    /// at most the one key they write).
    pub async fn txn(&self, req: TxnRequest) -> Result<Held<TxnResponse>, CoreError> {
        check_nesting(&req)?;
        if !writes(&req) {
            return self.txn_read(req).await;
        }
        if puts(&req) {
            self.check_quota().await?;
        }
        self.write(Command::Txn(req)).await.map(Held::unmetered)
    }

    /// Compacts through Raft. With `physical`, answers (as etcd does) once this member has
    /// also deleted the compacted history (`mvcc::reclaim`), not only moved the compact
    /// revision.
    pub async fn compact(&self, req: CompactionRequest) -> Result<CompactionResponse, CoreError> {
        let (physical, revision) = (req.physical, req.revision);
        let resp = self.write(Command::Compact(req)).await?;
        if physical {
            let mut progress = self.reclaim.clone();
            progress
                .wait_for(|r| r.reclaimed >= revision)
                .await
                .map_err(|_| CoreError::Stopped)?;
        }
        Ok(resp)
    }

    /// Grants lease `id` (0: a new random id) for `ttl` seconds.
    pub async fn lease_grant(&self, id: i64, ttl: i64) -> Result<LeaseGrantResponse, CoreError> {
        self.check_quota().await?;
        let id = if id == 0 { crate::lease::new_lease_id() } else { id };
        self.write(Command::LeaseGrant { id, ttl }).await
    }

    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse, CoreError> {
        self.write(Command::LeaseRevoke { id }).await
    }

    /// Raises (`activate`) or clears an alarm; returns the alarms this request changed
    /// (as etcd answers).
    pub async fn set_alarm(&self, activate: bool, alarm: AlarmMember) -> Result<Vec<AlarmMember>, CoreError> {
        let before = self.alarms().await?;
        match self.propose(Command::Alarm { activate, alarm }).await? {
            CommandResult::Alarm(_) if activate => Ok(vec![alarm]),
            CommandResult::Alarm(_) => Ok(before.into_iter().filter(|a| *a == alarm).collect()),
            other => Err(unexpected("alarm change", other)),
        }
    }

    /// Revokes an expired lease as this member, the leader: never forwarded to another
    /// member (`lease::expiry::Expire::revoke` says why). Fails when this member does not
    /// lead.
    pub(super) async fn expire_lease_here(&self, id: i64) -> Result<(), CoreError> {
        let cmd = Command::LeaseRevoke { id };
        let size = crate::raft::codec::command::encoded_len(&cmd);
        match self.propose_here(cmd, size).await?.0 {
            CommandResult::Error(e) => Err(CoreError::Apply(e)),
            _ => Ok(()),
        }
    }

    /// Proposes `cmd` and takes its response, with this node's full header.
    async fn write<R: Answer>(&self, cmd: Command) -> Result<R, CoreError> {
        let mut resp = R::from_result(self.propose(cmd).await?).map_err(|other| unexpected(R::WANTED, other))?;
        self.fill_header(resp.header());
        Ok(resp)
    }

    /// Replicates `cmd` through Raft (via the leader, from any member) and returns its
    /// applied result. A command the state machine refused comes back as `Err`.
    pub(super) async fn propose(&self, cmd: Command) -> Result<CommandResult, CoreError> {
        self.check_writable()?;
        let size = crate::raft::codec::command::encoded_len(&cmd);
        let limit = self.settings.limits.max_request_bytes;
        if size > limit {
            return Err(CoreError::RequestTooLarge { size, limit });
        }
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let (data, _index) = self
            .via_leader(deadline, |leader| {
                let cmd = cmd.clone();
                async move {
                    match leader {
                        Leader::Here => self.propose_here(cmd, size).await,
                        Leader::There(id, node) => self.forward_propose(id, &node, &cmd, deadline).await,
                    }
                }
            })
            .await?;
        match data {
            CommandResult::Error(e) => Err(CoreError::Apply(e)),
            CommandResult::Alarm(alarms) => {
                self.quota.set_nospace(alarms.iter().any(|a| a.alarm == AlarmType::Nospace as i32));
                Ok(CommandResult::Alarm(alarms))
            }
            other => Ok(other),
        }
    }

    /// On the leader: a write another member forwarded (an encoded `Command`).
    pub(super) async fn propose_forwarded(&self, data: &[u8]) -> Result<(CommandResult, u64), CoreError> {
        let cmd = crate::raft::codec::decode_command(data)?;
        self.propose_here(cmd, data.len()).await
    }

    /// On the leader: replicates `cmd` and returns its applied result and log index (in
    /// `object-storage` durability, once the entry is in object storage).
    async fn propose_here(&self, cmd: Command, size: usize) -> Result<(CommandResult, u64), CoreError> {
        // Also for a command another member forwarded: nothing enters the log that the
        // log cannot read back.
        if let Command::Txn(t) = &cmd {
            check_nesting(t)?;
        }
        let revoked = match &cmd {
            Command::LeaseRevoke { id } => Some(*id),
            _ => None,
        };
        let res = {
            let _not_during_a_transfer = self.handover.read().await;
            self.require_leader()?;
            let timer = crate::metrics::PROPOSAL_DURATION.start_timer();
            let res = if self.settings.durability == Durability::ObjectStorage {
                // An entry is applied (and its result known) only once it is in object
                // storage (`raft::gate`): an outage would hold the reply for ever.
                match tokio::time::timeout(ARCHIVE_WAIT, self.proposer.propose(cmd, size)).await {
                    Ok(res) => res,
                    Err(_) => {
                        crate::metrics::PROPOSALS_FAILED.inc();
                        return Err(CoreError::Timeout);
                    }
                }
            } else {
                self.proposer.propose(cmd, size).await
            };
            timer.observe_duration();
            res
        };
        match res {
            Ok((data, index)) => {
                crate::metrics::PROPOSALS_COMMITTED.inc();
                // The leader's lease deadlines follow every grant and revoke it commits,
                // whichever node the request came through.
                self.lessor.committed(revoked, &data);
                if self.settings.durability == Durability::ObjectStorage {
                    self.wait_archived(index).await?;
                }
                Ok((data, index))
            }
            Err(e) => {
                crate::metrics::PROPOSALS_FAILED.inc();
                Err(e.into())
            }
        }
    }

    /// `object-storage` durability: returns once log entry `index` is in object storage.
    /// Gives up after `ARCHIVE_WAIT` with etcd's timeout error; the write itself stays
    /// committed (as with an etcd timeout, the client cannot tell whether it applied).
    async fn wait_archived(&self, index: u64) -> Result<(), CoreError> {
        let mut archived = self.archived.clone();
        let reached = tokio::time::timeout(ARCHIVE_WAIT, archived.wait_for(|w| *w >= index)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(CoreError::Stopped),
            Err(_) => Err(CoreError::Timeout),
        }
    }
}

fn unexpected(wanted: &'static str, got: CommandResult) -> CoreError {
    CoreError::UnexpectedResult {
        wanted,
        got: format!("{got:?}"),
    }
}

/// The deepest txn nesting netsy takes (a txn alone is 1). prost decodes at most 100
/// nested messages, each level of a nested txn is two (`TxnRequest`, `RequestOp`), and a
/// Raft log entry wraps a command in three more (`Entry`, `Commands`, `Command`): a txn
/// nested 49 deep still decodes from a client, but its log entry does not decode again,
/// so Raft stops on the member that reads it back (every request then answers `server
/// stopped`) and the entry stays in the log. 32 leaves room in every message that
/// carries a txn or its response. etcd's limit is its operation budget (`max_txn_ops`
/// levels); deeper than this, netsy answers as etcd does past its own.
pub const MAX_TXN_NESTING: usize = 32;

fn check_nesting(t: &TxnRequest) -> Result<(), CoreError> {
    if nesting(t) > MAX_TXN_NESTING {
        return Err(InvalidRequest::TooManyOps.into());
    }
    Ok(())
}

/// How deep txns nest in `t` (1: no txn inside).
fn nesting(t: &TxnRequest) -> usize {
    use crate::proto::etcdserverpb::request_op::Request;
    let inner = branches(t).filter_map(|r| match r {
        Request::RequestTxn(t) => Some(nesting(t)),
        _ => None,
    });
    1 + inner.max().unwrap_or(0)
}

fn branches(t: &TxnRequest) -> impl Iterator<Item = &crate::proto::etcdserverpb::request_op::Request> {
    t.success.iter().chain(t.failure.iter()).filter_map(|op| op.request.as_ref())
}

/// Whether any branch (recursively) writes.
fn writes(t: &TxnRequest) -> bool {
    use crate::proto::etcdserverpb::request_op::Request;
    branches(t).any(|r| match r {
        Request::RequestPut(_) | Request::RequestDeleteRange(_) => true,
        Request::RequestTxn(t) => writes(t),
        Request::RequestRange(_) => false,
    })
}

/// Whether any branch (recursively) puts (and so may grow the database).
fn puts(t: &TxnRequest) -> bool {
    use crate::proto::etcdserverpb::request_op::Request;
    branches(t).any(|r| match r {
        Request::RequestPut(_) => true,
        Request::RequestTxn(t) => puts(t),
        _ => false,
    })
}

/// A read-only txn is serializable only if every range in it is.
pub(super) fn serializable(t: &TxnRequest) -> bool {
    use crate::proto::etcdserverpb::request_op::Request;
    branches(t).all(|r| match r {
        Request::RequestRange(r) => r.serializable,
        Request::RequestTxn(t) => serializable(t),
        _ => true,
    })
}
