//! Forwarded writes. A member that does not lead sends the writes its clients make to
//! the leader over one long-lived `Proposals` stream, not one RPC each: a message on an
//! open HTTP/2 stream costs both ends far less than a new request (headers, a stream,
//! a service call), and a member forwards thousands of writes a second. Each proposal
//! carries an id; the leader replicates each on its own and answers each with its id.
//!
//! A new stream is opened when the leader changes, when the old one ends, and after a
//! write timed out on it (the connection may be dead). Writes still waiting when a
//! stream fails get etcd's "request timed out": they may or may not have applied, as
//! with any request whose connection is lost. Commands and results travel in netsy's
//! own encoding (`raft::codec`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::api::errors::ApiError;
use crate::mvcc::{Command, CommandResult};
use crate::proto::peer::peer_client::PeerClient;
use crate::proto::peer::{Proposal, ProposalResult};
use crate::raft::{codec, NodeId};

type Outcome = Result<(CommandResult, u64), ApiError>;

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
pub struct Forwarder {
    next_id: AtomicU64,
    stream: Mutex<Option<Stream>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Forwarder {
    /// Sends `cmd` to `leader` (reached through `client`) and returns the leader's answer.
    pub async fn forward(
        &self,
        client: PeerClient<Channel>,
        leader: NodeId,
        cmd: &Command,
        deadline: Instant,
    ) -> Result<(CommandResult, u64), ApiError> {
        let command = codec::encode_command(cmd);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        let waiting = self.send(&client, leader, Proposal { id, command }, reply)?;
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(ApiError::Timeout),
            Err(_) => {
                lock(&waiting).replies.remove(&id);
                // The connection may be dead: the next write opens a new stream.
                self.close(&waiting);
                Err(ApiError::Timeout)
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
    ) -> Result<Arc<Mutex<Waiting>>, ApiError> {
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
        Err(ApiError::NoLeader)
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
                ApiError::from_peer(&s)
            }
            // The leader ended the stream with writes unanswered: their outcome is unknown.
            Ok(()) => ApiError::Timeout,
        };
        let mut w = lock(&answers);
        w.ended = true;
        for (_, reply) in w.replies.drain() {
            let _ = reply.send(Err(failure.clone()));
        }
    });
    Stream { leader, tx, waiting }
}

fn decode(r: ProposalResult) -> Outcome {
    if r.code != 0 {
        return Err(ApiError::from_peer(&Status::new(Code::from(r.code), r.message)));
    }
    let result = codec::decode_result(&r.result).map_err(|e| ApiError::Internal(crate::error_chain(&e)))?;
    Ok((result, r.index))
}

/// The leader's answer to proposal `id`, for the `Proposals` stream.
pub fn answer(id: u64, outcome: Result<(CommandResult, u64), ApiError>) -> ProposalResult {
    match outcome {
        Ok((result, index)) => ProposalResult {
            id,
            result: codec::encode_result(&result),
            index,
            ..Default::default()
        },
        Err(e) => {
            let status = Status::from(e);
            ProposalResult {
                id,
                code: status.code() as i32,
                message: status.message().to_string(),
                ..Default::default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::{Request, Response, Streaming};

    use super::*;
    use crate::proto::etcdserverpb::LeaseGrantResponse;
    use crate::proto::peer::peer_server::{Peer, PeerServer};
    use crate::proto::peer::*;

    /// How the fake leader treats `Proposals` streams.
    #[derive(Clone, Copy)]
    enum Mode {
        /// Answers every two proposals in reverse order; lease id 13 is refused with
        /// etcd's "leader changed".
        Pairs,
        /// Ends the stream after the first proposal, unanswered.
        HangUp,
    }

    struct FakeLeader {
        mode: Mode,
        streams: Arc<AtomicUsize>,
    }

    /// The answer to a lease grant: its id as the log index, so callers can tell answers apart.
    fn granted(cmd: &[u8]) -> Result<(CommandResult, u64), ApiError> {
        match codec::decode_command(cmd) {
            Ok(Command::LeaseGrant { id: 13, .. }) => Err(ApiError::LeaderChanged),
            Ok(Command::LeaseGrant { id, ttl }) => Ok((
                CommandResult::LeaseGrant(LeaseGrantResponse {
                    id,
                    ttl,
                    ..Default::default()
                }),
                id as u64,
            )),
            other => Err(ApiError::Internal(format!("unexpected {other:?}"))),
        }
    }

    type Unary<T> = Result<Response<T>, Status>;

    #[tonic::async_trait]
    impl Peer for FakeLeader {
        type ProposalsStream = UnboundedReceiverStream<Result<ProposalResult, Status>>;

        async fn proposals(&self, request: Request<Streaming<Proposal>>) -> Unary<Self::ProposalsStream> {
            let mode = self.mode;
            self.streams.fetch_add(1, Ordering::SeqCst);
            let mut inbound = request.into_inner();
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok(Some(p)) = inbound.message().await {
                    if let Mode::HangUp = mode {
                        return;
                    }
                    held.push(p);
                    if held.len() == 2 {
                        for p in held.drain(..).rev() {
                            let _ = tx.send(Ok(answer(p.id, granted(&p.command))));
                        }
                    }
                }
            });
            Ok(Response::new(UnboundedReceiverStream::new(rx)))
        }

        async fn hello(&self, _: Request<HelloRequest>) -> Unary<HelloResponse> {
            Err(Status::unimplemented(""))
        }
        async fn append_entries(&self, _: Request<AppendEntriesRequest>) -> Unary<AppendEntriesReply> {
            Err(Status::unimplemented(""))
        }
        async fn vote(&self, _: Request<VoteRequest>) -> Unary<VoteReply> {
            Err(Status::unimplemented(""))
        }
        async fn install_snapshot(&self, _: Request<InstallSnapshotRequest>) -> Unary<InstallSnapshotReply> {
            Err(Status::unimplemented(""))
        }
        async fn read_index(&self, _: Request<ReadIndexRequest>) -> Unary<ReadIndexResponse> {
            Err(Status::unimplemented(""))
        }
        async fn lease_keep_alive(&self, _: Request<LeaseKeepAliveRequest>) -> Unary<LeaseKeepAliveResponse> {
            Err(Status::unimplemented(""))
        }
        async fn join(&self, _: Request<JoinRequest>) -> Unary<JoinResponse> {
            Err(Status::unimplemented(""))
        }
        async fn remove_member(&self, _: Request<RemoveMemberRequest>) -> Unary<RemoveMemberResponse> {
            Err(Status::unimplemented(""))
        }
        async fn transfer_leadership(&self, _: Request<TransferLeadershipRequest>) -> Unary<TransferLeadershipResponse> {
            Err(Status::unimplemented(""))
        }
        async fn campaign(&self, _: Request<CampaignRequest>) -> Unary<CampaignResponse> {
            Err(Status::unimplemented(""))
        }
    }

    struct Harness {
        client: PeerClient<Channel>,
        streams: Arc<AtomicUsize>,
    }

    async fn leader(mode: Mode) -> Harness {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let streams = Arc::new(AtomicUsize::new(0));
        let fake = FakeLeader {
            mode,
            streams: streams.clone(),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(PeerServer::new(fake))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        Harness {
            client: PeerClient::new(channel),
            streams,
        }
    }

    fn grant(id: i64) -> Command {
        Command::LeaseGrant { id, ttl: 60 }
    }

    /// Two writes forwarded at the same time.
    async fn pair(
        f: &Forwarder,
        client: &PeerClient<Channel>,
        leader: NodeId,
        a: i64,
        b: i64,
    ) -> (Result<(CommandResult, u64), ApiError>, Result<(CommandResult, u64), ApiError>) {
        let (a, b) = (grant(a), grant(b));
        tokio::join!(
            f.forward(client.clone(), leader, &a, soon()),
            f.forward(client.clone(), leader, &b, soon())
        )
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    #[tokio::test]
    async fn answers_reach_their_own_writes_in_any_order_on_one_stream() {
        let h = leader(Mode::Pairs).await;
        let f = Forwarder::default();
        for round in 0..3 {
            let (a, b) = (round * 10 + 1, round * 10 + 2);
            let (ra, rb) = pair(&f, &h.client, 1, a, b).await;
            assert_eq!(ra.unwrap().1, a as u64);
            assert_eq!(rb.unwrap().1, b as u64);
        }
        assert_eq!(h.streams.load(Ordering::SeqCst), 1, "every write went on the same stream");
    }

    #[tokio::test]
    async fn a_refused_write_gets_the_leaders_etcd_error() {
        let h = leader(Mode::Pairs).await;
        let f = Forwarder::default();
        let (refused, ok) = pair(&f, &h.client, 1, 13, 5).await;
        assert_eq!(refused.unwrap_err(), ApiError::LeaderChanged);
        assert_eq!(ok.unwrap().1, 5);
    }

    #[tokio::test]
    async fn a_stream_that_ends_fails_its_writes_at_once_and_the_next_write_reopens() {
        let h = leader(Mode::HangUp).await;
        let f = Forwarder::default();
        let started = std::time::Instant::now();
        let r = f.forward(h.client.clone(), 1, &grant(1), soon()).await;
        assert_eq!(r.unwrap_err(), ApiError::Timeout, "unknown outcome: etcd's request timed out");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "failed when the stream ended, not at the deadline"
        );
        let r = f.forward(h.client.clone(), 1, &grant(2), soon()).await;
        assert_eq!(r.unwrap_err(), ApiError::Timeout);
        assert_eq!(h.streams.load(Ordering::SeqCst), 2, "the second write opened a new stream");
    }

    #[tokio::test]
    async fn a_write_that_times_out_gives_up_its_stream() {
        let h = leader(Mode::Pairs).await;
        let f = Forwarder::default();
        // Alone, the write is never answered (the fake answers in pairs).
        let r = f
            .forward(h.client.clone(), 1, &grant(1), Instant::now() + Duration::from_millis(300))
            .await;
        assert_eq!(r.unwrap_err(), ApiError::Timeout);
        let (ra, rb) = pair(&f, &h.client, 1, 2, 3).await;
        assert_eq!((ra.unwrap().1, rb.unwrap().1), (2, 3));
        assert_eq!(h.streams.load(Ordering::SeqCst), 2, "the timed-out stream was not reused");
    }

    #[tokio::test]
    async fn a_new_leader_gets_a_new_stream() {
        let (one, two) = (leader(Mode::Pairs).await, leader(Mode::Pairs).await);
        let f = Forwarder::default();
        for (id, h) in [(1, &one), (2, &two)] {
            let (ra, rb) = pair(&f, &h.client, id, 7, 8).await;
            assert_eq!((ra.unwrap().1, rb.unwrap().1), (7, 8));
        }
        assert_eq!(one.streams.load(Ordering::SeqCst), 1);
        assert_eq!(two.streams.load(Ordering::SeqCst), 1);
    }
}
