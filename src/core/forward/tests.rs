//! The member's half of forwarding against a fake leader.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Streaming};

use super::stream::{answer, Forwarder};
use super::*;
use crate::mvcc::{Command, CommandResult};
use crate::proto::etcdserverpb::LeaseGrantResponse;
use crate::proto::peer::peer_server::{Peer, PeerServer};
use crate::proto::peer::*;
use crate::raft::codec;

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
fn granted(cmd: &[u8]) -> Result<(CommandResult, u64), CoreError> {
    match codec::decode_command(cmd) {
        Ok(Command::LeaseGrant { id: 13, .. }) => Err(CoreError::LeaderChanged),
        Ok(Command::LeaseGrant { id, ttl }) => Ok((
            CommandResult::LeaseGrant(LeaseGrantResponse {
                id,
                ttl,
                ..Default::default()
            }),
            id as u64,
        )),
        other => Err(CoreError::Leader(format!("unexpected {other:?}"))),
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
) -> (Result<(CommandResult, u64), CoreError>, Result<(CommandResult, u64), CoreError>) {
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
    assert!(matches!(refused.unwrap_err(), CoreError::LeaderChanged));
    assert_eq!(ok.unwrap().1, 5);
}

#[tokio::test]
async fn a_stream_that_ends_fails_its_writes_at_once_and_the_next_write_reopens() {
    let h = leader(Mode::HangUp).await;
    let f = Forwarder::default();
    let started = std::time::Instant::now();
    let r = f.forward(h.client.clone(), 1, &grant(1), soon()).await;
    assert!(
        matches!(r.unwrap_err(), CoreError::Timeout),
        "unknown outcome: etcd's request timed out"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failed when the stream ended, not at the deadline"
    );
    let r = f.forward(h.client.clone(), 1, &grant(2), soon()).await;
    assert!(matches!(r.unwrap_err(), CoreError::Timeout));
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
    assert!(matches!(r.unwrap_err(), CoreError::Timeout));
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

#[test]
fn a_refusal_travels_typed_and_an_older_leaders_string_is_never_parsed() {
    use super::stream::decode;
    let refused = answer(7, Err(CoreError::Apply(crate::mvcc::MvccError::LeaseNotFound)));
    assert!(refused.code != 0 && !refused.message.is_empty(), "0.2.0 members read these");
    match decode(refused) {
        Err(CoreError::Apply(crate::mvcc::MvccError::LeaseNotFound)) => {}
        other => panic!("{other:?}"),
    }
    // What a netsy 0.2.0 leader sends: only a code and etcd's string.
    let older = ProposalResult {
        id: 7,
        code: tonic::Code::NotFound as i32,
        message: "etcdserver: requested lease not found".into(),
        ..Default::default()
    };
    assert!(
        matches!(decode(older), Err(CoreError::Timeout)),
        "unknown outcome, never a parsed string"
    );
}
