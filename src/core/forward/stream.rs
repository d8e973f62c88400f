//! Forwarded writes, the member's half. A member that does not lead sends the writes its clients make to
//! the leader over one long-lived `Proposals` stream, not one RPC each: a message on an
//! open HTTP/2 stream costs both ends far less than a new request (headers, a stream,
//! a service call), and a member forwards thousands of writes a second. Each proposal
//! carries an id; the leader replicates each on its own and answers each with its id.
//!
//! A new stream is opened when the leader changes, when the old one ends, and after a
//! write timed out on it (the connection may be dead). Writes still waiting when a
//! stream fails get etcd's "request timed out": they may or may not have applied, as
//! with any request whose connection is lost. Commands and results travel in netsy's
//! own encoding (`raft::codec`), failures as typed `PeerError`s (`wire`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tonic::Status;

use super::wire;
use crate::core::CoreError;
use crate::mvcc::{Command, CommandResult};
use crate::proto::peer::peer_client::PeerClient;
use crate::proto::peer::{Proposal, ProposalResult};
use crate::raft::{codec, NodeId};

pub(super) type Outcome = Result<(CommandResult, u64), CoreError>;

/// The writes waiting for an answer on one stream.
#[derive(Default)]
struct Waiting {
    /// Set once the stream has ended: nothing more will be answered on it.
    ended: bool,
    replies: HashMap<u64, oneshot::Sender<Outcome>>,
}

struct Stream {
    leader: NodeId,
    tx: mpsc::UnboundedSender<Proposal>,
    waiting: Arc<Mutex<Waiting>>,
}

#[derive(Default)]
pub(crate) struct Forwarder {
    next_id: AtomicU64,
    stream: Mutex<Option<Stream>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Forwarder {
    /// Sends `cmd` to `leader` (reached through `client`) and returns the leader's answer.
    pub(crate) async fn forward(
        &self,
        client: PeerClient<Channel>,
        leader: NodeId,
        cmd: &Command,
        deadline: Instant,
    ) -> Result<(CommandResult, u64), CoreError> {
        let command = codec::encode_command(cmd);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        let waiting = self.send(&client, leader, Proposal { id, command }, reply)?;
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(CoreError::Timeout),
            Err(_) => {
                lock(&waiting).replies.remove(&id);
                // The connection may be dead: the next write opens a new stream.
                self.close(&waiting);
                Err(CoreError::Timeout)
            }
        }
    }

    /// Queues `proposal` on the stream to `leader`, opening one if there is none or the
    /// current one has ended; returns the stream's waiting writes.
    fn send(
        &self,
        client: &PeerClient<Channel>,
        leader: NodeId,
        mut proposal: Proposal,
        reply: oneshot::Sender<Outcome>,
    ) -> Result<Arc<Mutex<Waiting>>, CoreError> {
        let id = proposal.id;
        let mut stream = lock(&self.stream);
        let mut reply = Some(reply);
        for fresh in [false, true] {
            let s = match stream.as_ref() {
                Some(s) if s.leader == leader && !fresh => s,
                _ => stream.insert(open(client.clone(), leader)),
            };
            {
                let mut w = lock(&s.waiting);
                if w.ended {
                    continue;
                }
                if let Some(r) = reply.take() {
                    w.replies.insert(id, r);
                }
            }
            match s.tx.send(proposal) {
                Ok(()) => return Ok(s.waiting.clone()),
                // The stream is closing: nothing was sent, so try a new one.
                Err(mpsc::error::SendError(unsent)) => {
                    proposal = unsent;
                    reply = lock(&s.waiting).replies.remove(&id);
                }
            }
        }
        // Even a new stream ended at once: the leader cannot be reached.
        *stream = None;
        Err(CoreError::NoLeader)
    }

    /// Drops the stream whose waiting writes are `waiting`, if it is still the current one.
    fn close(&self, waiting: &Arc<Mutex<Waiting>>) {
        let mut stream = lock(&self.stream);
        if stream.as_ref().is_some_and(|s| Arc::ptr_eq(&s.waiting, waiting)) {
            *stream = None;
        }
    }
}

/// Opens a `Proposals` stream to `leader`; a task routes its answers to the waiting
/// writes and, when the stream ends, fails those still waiting.
fn open(mut client: PeerClient<Channel>, leader: NodeId) -> Stream {
    let (tx, rx) = mpsc::unbounded_channel();
    let waiting = Arc::new(Mutex::new(Waiting::default()));
    let answers = waiting.clone();
    tokio::spawn(async move {
        let ended = async {
            let mut results = client.proposals(UnboundedReceiverStream::new(rx)).await?.into_inner();
            while let Some(r) = results.message().await? {
                let reply = lock(&answers).replies.remove(&r.id);
                if let Some(reply) = reply {
                    let _ = reply.send(decode(r));
                }
            }
            Ok::<(), Status>(())
        }
        .await;
        let failure = match ended {
            Err(s) => {
                tracing::debug!(leader, error = %s, "the proposal stream to the leader failed");
                wire::from_status(&s)
            }
            // The leader ended the stream with writes unanswered: their outcome is unknown.
            Ok(()) => CoreError::Timeout,
        };
        let mut w = lock(&answers);
        w.ended = true;
        for (_, reply) in w.replies.drain() {
            let _ = reply.send(Err(failure.clone()));
        }
    });
    Stream { leader, tx, waiting }
}

pub(super) fn decode(r: ProposalResult) -> Outcome {
    if let Some(e) = r.error {
        return Err(wire::from_pb(e));
    }
    if r.code != 0 {
        // A netsy 0.2.0 leader's failure: its kind is only in a string, never parsed.
        tracing::debug!(code = r.code, message = %r.message, "a forwarded write failed on an older leader");
        return Err(CoreError::Timeout);
    }
    Ok((codec::decode_result(&r.result)?, r.index))
}

/// The leader's answer to proposal `id`, for the `Proposals` stream.
pub(super) fn answer(id: u64, outcome: Outcome) -> ProposalResult {
    match outcome {
        Ok((result, index)) => ProposalResult {
            id,
            result: codec::encode_result(&result),
            index,
            ..Default::default()
        },
        Err(e) => {
            let status = wire::to_status(&e);
            ProposalResult {
                id,
                error: Some(wire::to_pb(&e)),
                code: status.code() as i32,
                message: status.message().to_string(),
                ..Default::default()
            }
        }
    }
}
