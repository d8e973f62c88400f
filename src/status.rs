//! `netsy status`: one look at a running cluster for an operator. Per endpoint: etcd's
//! `Status` (ids, leader, term, Raft index and applied index, database size against the
//! quota, errors), netsy's archive figures from the member's `/metrics` over the same
//! connection (its epoch; upload lag and the newest snapshot's age, which only the
//! leader keeps current), and the expiry of the server certificate it presented. Once,
//! from the first member that answers: the member list (names, roles) and the alarms. A
//! member that does not answer is a row with its error; the others are still shown.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tonic::transport::Channel;

use crate::proto::etcdserverpb::alarm_request::AlarmAction;
use crate::proto::etcdserverpb::cluster_client::ClusterClient;
use crate::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use crate::proto::etcdserverpb::{AlarmRequest, AlarmType, MemberListRequest, StatusRequest, StatusResponse};
use crate::tls::connect::{self, ConnectError, PresentedCert};
use crate::tls::material::ClientFiles;
use crate::tls::TlsError;

/// The most of `/metrics` read (a member's is a few tens of KiB).
const METRICS_LIMIT: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The member ended the TLS connection: it refused this client.
    #[error("the member closed the TLS connection{hint}")]
    Refused {
        hint: &'static str,
        #[source]
        source: Box<StatusError>,
    },
    /// This side refused the member's server certificate.
    #[error("the member's server certificate does not verify against --cacert: not issued by that CA, expired, or not valid for the endpoint's host")]
    ServerCert {
        #[source]
        source: Box<StatusError>,
    },
    #[error("cannot connect to {addr} within {after:?} (--dial-timeout)")]
    DialTimeout { addr: String, after: Duration },
    #[error("{call}: no answer within {after:?} (--command-timeout)")]
    Timeout { call: &'static str, after: Duration },
    #[error("{call}: {}", status_text(status))]
    Call {
        call: &'static str,
        #[source]
        status: Box<tonic::Status>,
    },
    #[error("GET /metrics: {source}")]
    MetricsRequest {
        #[source]
        source: tonic::transport::Error,
    },
    #[error("GET /metrics answered {status}")]
    MetricsStatus { status: u16 },
    #[error("GET /metrics: reading the body: {source}")]
    MetricsBody {
        #[source]
        source: axum::Error,
    },
}

/// A gRPC status as etcdctl shows one: its message, or its code when it has none.
fn status_text(status: &tonic::Status) -> String {
    if status.message().is_empty() {
        status.code().to_string()
    } else {
        status.message().to_string()
    }
}

/// `e` with every cause behind it, as `crate::error_chain`, but with a gRPC status shown
/// once (by its call's message; its own text repeats its source's debug form).
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        let grpc_status = s.is::<tonic::Status>() || s.is::<Box<tonic::Status>>();
        if !grpc_status && !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Whether `e` or any error in its source chain satisfies `test`.
fn any_in_chain(e: &(dyn std::error::Error + 'static), test: impl Fn(&(dyn std::error::Error + 'static)) -> bool) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if test(err) {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Whether a TLS alert from the member ended the connection behind `e` (rustls's error,
/// or its text where hyper kept only that).
fn tls_alert(e: &(dyn std::error::Error + 'static)) -> bool {
    any_in_chain(e, |err| {
        matches!(err.downcast_ref::<rustls::Error>(), Some(rustls::Error::AlertReceived(_)))
            || err.to_string().contains("received fatal alert")
    })
}

/// Whether this side refused the server's certificate behind `e`.
fn bad_server_cert(e: &(dyn std::error::Error + 'static)) -> bool {
    any_in_chain(e, |err| {
        matches!(err.downcast_ref::<rustls::Error>(), Some(rustls::Error::InvalidCertificate(_)))
            || err.to_string().contains("invalid peer certificate")
    })
}

/// Whether the connection itself failed behind `e` (not an answer of the member's).
fn transport_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    any_in_chain(e, |err| err.downcast_ref::<tonic::transport::Error>().is_some())
}

/// How a TLS connection to a member went, to explain its failures.
#[derive(Clone, Copy)]
struct Attempt {
    tls: bool,
    client_cert: bool,
    /// Whether the channel connected (a TLS 1.3 server refuses a client certificate
    /// after the client's side of the handshake is done).
    connected: bool,
}

/// `e`, explained when TLS is why it failed: `ServerCert` when this side refused the
/// member's certificate; `Refused` when the member ended the connection with an alert
/// or, once connected, closed it (as it does when it refuses the client's certificate,
/// or the lack of one).
fn explain(at: Attempt, e: StatusError) -> StatusError {
    let Attempt {
        tls,
        client_cert,
        connected,
    } = at;
    if !tls
        || matches!(
            e,
            StatusError::Refused { .. } | StatusError::ServerCert { .. } | StatusError::DialTimeout { .. } | StatusError::Tls(_)
        )
    {
        return e;
    }
    if !connected && bad_server_cert(&e) {
        return StatusError::ServerCert { source: Box::new(e) };
    }
    let closed_by_member = tls_alert(&e) || (connected && transport_failure(&e));
    if !closed_by_member {
        return e;
    }
    let hint = if client_cert {
        ", as it does when it refuses the client certificate: check that --cert and --key are a client certificate of this cluster, issued by the CA the member trusts"
    } else {
        ": it requires a client certificate of the cluster; give --cert and --key"
    };
    StatusError::Refused { hint, source: Box::new(e) }
}

/// What to ask and how (etcdctl's flags).
#[derive(Debug, Clone)]
pub struct Options {
    pub endpoints: Vec<String>,
    pub files: ClientFiles,
    pub insecure_skip_verify: bool,
    pub dial_timeout: Duration,
    pub command_timeout: Duration,
}

/// The cluster as its members answered.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The leader's member id (hex) as the answering member with the highest term names
    /// it; none while no member knows a leader.
    pub leader: Option<String>,
    pub members: Vec<Member>,
    pub alarms: Vec<Alarm>,
    pub endpoints: Vec<EndpointStatus>,
    /// Why the member list and alarms could not be read from any answering member.
    pub cluster_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Member {
    pub id: String,
    pub name: String,
    /// `leader`, `follower` or `learner`.
    pub role: &'static str,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Alarm {
    pub member_id: String,
    /// The member's name, when the member list has it.
    pub member: Option<String>,
    /// `NOSPACE` or `CORRUPT`.
    pub alarm: String,
}

/// One endpoint's row.
#[derive(Debug, Serialize)]
pub struct EndpointStatus {
    pub endpoint: String,
    /// From its own answer, or for a member that did not answer, from the member list
    /// entry whose client URL is this endpoint.
    pub member_id: Option<String>,
    pub name: Option<String>,
    /// `leader`, `follower` or `learner` (by its own answer).
    pub role: Option<&'static str>,
    pub status: Option<EtcdStatus>,
    pub archive: Option<Archive>,
    /// Why `archive` is missing though the member answered `Status`.
    pub metrics_error: Option<String>,
    /// When the server certificate it presented expires (RFC 3339); none for plaintext.
    pub cert_not_after: Option<String>,
    /// Why the member gave no status; the command then exits non-zero.
    pub error: Option<String>,
}

/// etcd's `Status` answer.
#[derive(Debug, Serialize)]
pub struct EtcdStatus {
    pub version: String,
    pub leader: String,
    pub raft_term: u64,
    pub raft_index: u64,
    pub raft_applied_index: u64,
    pub db_size: i64,
    pub db_size_in_use: i64,
    pub db_size_quota: i64,
    pub is_learner: bool,
    pub errors: Vec<String>,
}

/// netsy's archive figures from a member's `/metrics`. The uploader and the snapshotter
/// run on the leader: the other fields are given for the member that leads only (a
/// former leader's gauges keep what it last saw).
#[derive(Debug, Serialize, PartialEq)]
pub struct Archive {
    pub epoch: Option<u64>,
    /// The last Raft index in object storage.
    pub uploaded_index: Option<u64>,
    /// Applied entries not in object storage yet.
    pub lag_entries: Option<u64>,
    /// Since the uploader last had every committed entry in object storage.
    pub lag_seconds: Option<i64>,
    pub snapshot_index: Option<u64>,
    /// Since the newest snapshot in object storage was written; none when there is none.
    pub snapshot_age_seconds: Option<i64>,
}

impl Report {
    /// Whether some endpoint gave no status (`netsy status` exits non-zero, as
    /// `etcdctl endpoint status` does).
    pub fn failed(&self) -> bool {
        self.endpoints.is_empty() || self.endpoints.iter().any(|e| e.error.is_some())
    }
}

/// What one endpoint answered.
struct Probe {
    channel: Option<Channel>,
    status: Result<StatusResponse, StatusError>,
    metrics: Option<Result<String, StatusError>>,
    cert_not_after: Option<i64>,
}

/// Asks every endpoint, concurrently. `Err` only for what is wrong here (unreadable TLS
/// files); whatever a member answers, or fails to, is in the report.
pub async fn gather(opts: &Options) -> Result<Report, StatusError> {
    let secure = opts.files.any() || opts.insecure_skip_verify || opts.endpoints.iter().any(|e| e.starts_with("https://"));
    let tls = if secure {
        let material = opts.files.load()?;
        Some(Arc::new(crate::tls::verify::tool_client_config(
            &material,
            opts.insecure_skip_verify,
        )?))
    } else {
        None
    };
    let probes = futures::future::join_all(opts.endpoints.iter().map(|e| probe(e, tls.clone(), opts))).await;
    let now = crate::metrics::unix_now();

    let mut members = None;
    let mut alarms = Vec::new();
    let mut cluster_error = None;
    for p in &probes {
        let (Some(channel), Ok(_)) = (&p.channel, &p.status) else {
            continue;
        };
        match cluster_view(channel.clone(), opts.command_timeout).await {
            Ok((m, a)) => {
                members = Some(m);
                alarms = a;
                cluster_error = None;
                break;
            }
            Err(e) => cluster_error = Some(describe(&e)),
        }
    }
    let members = members.unwrap_or_default();
    let leader = probes
        .iter()
        .filter_map(|p| p.status.as_ref().ok())
        .filter(|s| s.leader != 0)
        .max_by_key(|s| s.raft_term)
        .map(|s| s.leader);
    let name_of = |id: u64| members.iter().find(|m| m.id == id).map(|m| m.name.clone());

    let endpoints = opts
        .endpoints
        .iter()
        .zip(probes)
        .map(|(endpoint, p)| endpoint_row(endpoint, p, &members, now))
        .collect();
    Ok(Report {
        leader: leader.map(hex),
        members: members
            .iter()
            .map(|m| Member {
                id: hex(m.id),
                name: m.name.clone(),
                role: if m.is_learner {
                    "learner"
                } else if Some(m.id) == leader {
                    "leader"
                } else {
                    "follower"
                },
                peer_urls: m.peer_urls.clone(),
                client_urls: m.client_urls.clone(),
            })
            .collect(),
        alarms: alarms
            .iter()
            .map(|a| Alarm {
                member_id: hex(a.member_id),
                member: name_of(a.member_id),
                alarm: AlarmType::try_from(a.alarm).map_or_else(|_| a.alarm.to_string(), |t| t.as_str_name().to_string()),
            })
            .collect(),
        endpoints,
        cluster_error,
    })
}

fn endpoint_row(endpoint: &str, p: Probe, members: &[crate::proto::etcdserverpb::Member], now: i64) -> EndpointStatus {
    let cert_not_after = p.cert_not_after.map(rfc3339);
    let s = match p.status {
        Ok(s) => s,
        Err(e) => {
            let listed = members.iter().find(|m| m.client_urls.iter().any(|u| same_endpoint(u, endpoint)));
            return EndpointStatus {
                endpoint: endpoint.to_string(),
                member_id: listed.map(|m| hex(m.id)),
                name: listed.map(|m| m.name.clone()),
                role: None,
                status: None,
                archive: None,
                metrics_error: None,
                cert_not_after,
                error: Some(describe(&e)),
            };
        }
    };
    let id = s.header.as_ref().map_or(0, |h| h.member_id);
    let leads = s.leader != 0 && s.leader == id;
    let (archive, metrics_error) = match p.metrics {
        Some(Ok(text)) => (Some(archive_figures(&parse_metrics(&text), leads, now)), None),
        Some(Err(e)) => (None, Some(describe(&e))),
        None => (None, None),
    };
    EndpointStatus {
        endpoint: endpoint.to_string(),
        member_id: Some(hex(id)),
        name: members.iter().find(|m| m.id == id).map(|m| m.name.clone()),
        role: Some(if s.is_learner {
            "learner"
        } else if leads {
            "leader"
        } else {
            "follower"
        }),
        status: Some(EtcdStatus {
            version: s.version,
            leader: hex(s.leader),
            raft_term: s.raft_term,
            raft_index: s.raft_index,
            raft_applied_index: s.raft_applied_index,
            db_size: s.db_size,
            db_size_in_use: s.db_size_in_use,
            db_size_quota: s.db_size_quota,
            is_learner: s.is_learner,
            errors: s.errors,
        }),
        archive,
        metrics_error,
        cert_not_after,
        error: None,
    }
}

/// The archive figures from a member's metrics; `leads`: whether it is the leader.
fn archive_figures(samples: &[Sample], leads: bool, now: i64) -> Archive {
    let get = |name: &str| samples.iter().find(|s| s.name == name).map(|s| s.value);
    let count = |name: &str| get(name).filter(|v| v.is_finite() && *v >= 0.0).map(|v| v as u64);
    let time = |name: &str| get(name).filter(|v| v.is_finite() && *v > 0.0).map(|v| v as i64);
    let epoch = count("netsy_archive_epoch").filter(|e| *e > 0);
    if !leads {
        return Archive {
            epoch,
            uploaded_index: None,
            lag_entries: None,
            lag_seconds: None,
            snapshot_index: None,
            snapshot_age_seconds: None,
        };
    }
    let uploaded = count("netsy_archive_uploaded_index");
    let snapshot_time = time("netsy_archive_snapshot_timestamp_seconds");
    Archive {
        epoch,
        uploaded_index: uploaded,
        lag_entries: match (count("etcd_server_applied_index"), uploaded) {
            (Some(applied), Some(up)) => Some(applied.saturating_sub(up)),
            _ => None,
        },
        lag_seconds: time("netsy_archive_caught_up_timestamp_seconds").map(|t| (now - t).max(0)),
        snapshot_index: count("netsy_archive_snapshot_index").filter(|_| snapshot_time.is_some()),
        snapshot_age_seconds: snapshot_time.map(|t| (now - t).max(0)),
    }
}

async fn probe(endpoint: &str, tls: Option<Arc<rustls::ClientConfig>>, opts: &Options) -> Probe {
    let presented = PresentedCert::default();
    let mut attempt = Attempt {
        tls: match endpoint.split_once("://") {
            Some((scheme, _)) => scheme == "https",
            None => tls.is_some(),
        },
        client_cert: opts.files.cert.is_some(),
        connected: false,
    };
    // The channel's own connect timeout is longer, so that the one below, which names
    // the flag, is the one that ends a dial.
    let dial = connect::client_channel(endpoint, tls, opts.dial_timeout * 2, &presented);
    let dialed = match tokio::time::timeout(opts.dial_timeout, dial).await {
        Ok(r) => r.map_err(StatusError::from),
        Err(_) => Err(StatusError::DialTimeout {
            addr: endpoint.to_string(),
            after: opts.dial_timeout,
        }),
    };
    let channel = match dialed {
        Ok(c) => c,
        Err(e) => {
            return Probe {
                channel: None,
                status: Err(explain(attempt, e)),
                metrics: None,
                cert_not_after: not_after(&presented),
            }
        }
    };
    attempt.connected = true;
    let status = with_timeout(
        "Status",
        opts.command_timeout,
        MaintenanceClient::new(channel.clone()).status(StatusRequest {}),
    )
    .await
    .map(tonic::Response::into_inner)
    .map_err(|e| explain(attempt, e));
    let metrics = match &status {
        Ok(_) => Some(
            match tokio::time::timeout(opts.command_timeout, fetch_metrics(channel.clone())).await {
                Ok(r) => r,
                Err(_) => Err(StatusError::Timeout {
                    call: "GET /metrics",
                    after: opts.command_timeout,
                }),
            },
        ),
        Err(_) => None,
    };
    Probe {
        channel: Some(channel),
        status,
        metrics,
        cert_not_after: not_after(&presented),
    }
}

fn not_after(presented: &PresentedCert) -> Option<i64> {
    presented.get().and_then(|der| crate::tls::identity::not_after(&der).ok())
}

async fn with_timeout<T>(
    call: &'static str,
    after: Duration,
    f: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, StatusError> {
    match tokio::time::timeout(after, f).await {
        Ok(r) => r.map_err(|status| StatusError::Call {
            call,
            status: Box::new(status),
        }),
        Err(_) => Err(StatusError::Timeout { call, after }),
    }
}

/// The member list and the alarms, from one member.
async fn cluster_view(
    channel: Channel,
    after: Duration,
) -> Result<
    (
        Vec<crate::proto::etcdserverpb::Member>,
        Vec<crate::proto::etcdserverpb::AlarmMember>,
    ),
    StatusError,
> {
    let members = with_timeout(
        "MemberList",
        after,
        ClusterClient::new(channel.clone()).member_list(MemberListRequest { linearizable: false }),
    )
    .await?
    .into_inner()
    .members;
    let alarms = with_timeout(
        "Alarm",
        after,
        MaintenanceClient::new(channel).alarm(AlarmRequest {
            action: AlarmAction::Get as i32,
            member_id: 0,
            alarm: AlarmType::None as i32,
        }),
    )
    .await?
    .into_inner()
    .alarms;
    Ok((members, alarms))
}

/// `GET /metrics` on the member's client port, over the gRPC connection (HTTP/2).
async fn fetch_metrics(channel: Channel) -> Result<String, StatusError> {
    use tower::{Service, ServiceExt};
    let mut request = tonic::codegen::http::Request::new(tonic::body::Body::empty());
    *request.uri_mut() = tonic::codegen::http::Uri::from_static("/metrics");
    let mut channel = channel;
    let response = channel
        .ready()
        .await
        .map_err(|source| StatusError::MetricsRequest { source })?
        .call(request)
        .await
        .map_err(|source| StatusError::MetricsRequest { source })?;
    if !response.status().is_success() {
        return Err(StatusError::MetricsStatus {
            status: response.status().as_u16(),
        });
    }
    let body = axum::body::to_bytes(axum::body::Body::new(response.into_body()), METRICS_LIMIT)
        .await
        .map_err(|source| StatusError::MetricsBody { source })?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// The samples of a Prometheus text exposition: `name{label="value",...} value
/// [timestamp]`, comments and blank lines skipped, as are lines that do not parse.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, tail) = parse_labels(after)?;
        labels = parsed;
        rest = tail;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `label="value",...}` (after the `{`): the labels and what follows the `}`.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(tail) = s.strip_prefix('}') {
            return Some((labels, tail));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_string();
        s = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        labels.push((key, value));
        s = s[end + 1..].trim_start();
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

/// A member id as etcdctl prints it.
fn hex(id: u64) -> String {
    format!("{id:x}")
}

/// `host:port` of an endpoint or URL, for comparing them.
fn authority(url: &str) -> &str {
    url.split_once("://").map_or(url, |(_, rest)| rest).trim_end_matches('/')
}

fn same_endpoint(a: &str, b: &str) -> bool {
    authority(a) == authority(b)
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// The report as a table (`-w table`): a row per endpoint, then the leader, the members
/// and the alarms. `now`: Unix seconds, for the certificates' remaining days.
pub fn table(report: &Report, now: i64) -> String {
    const HEADERS: [&str; 14] = [
        "ENDPOINT",
        "NAME",
        "ID",
        "ROLE",
        "TERM",
        "INDEX",
        "APPLIED",
        "DB SIZE",
        "QUOTA",
        "EPOCH",
        "ARCHIVE LAG",
        "SNAPSHOT AGE",
        "CERT EXPIRES",
        "ERRORS",
    ];
    let dash = || "-".to_string();
    let rows: Vec<Vec<String>> = report
        .endpoints
        .iter()
        .map(|e| {
            let s = e.status.as_ref();
            let a = e.archive.as_ref();
            let mut errors: Vec<String> = s.map(|s| s.errors.clone()).unwrap_or_default();
            errors.extend(e.metrics_error.iter().map(|m| format!("metrics: {m}")));
            errors.extend(e.error.clone());
            vec![
                e.endpoint.clone(),
                e.name.clone().unwrap_or_else(dash),
                e.member_id.clone().unwrap_or_else(dash),
                e.role.map_or_else(dash, str::to_string),
                s.map_or_else(dash, |s| s.raft_term.to_string()),
                s.map_or_else(dash, |s| s.raft_index.to_string()),
                s.map_or_else(dash, |s| s.raft_applied_index.to_string()),
                s.map_or_else(dash, |s| format!("{} ({} in use)", bytes(s.db_size), bytes(s.db_size_in_use))),
                // etcd 3.5 does not report its quota (0): shown as unknown.
                s.filter(|s| s.db_size_quota > 0).map_or_else(dash, |s| {
                    let used = s.db_size as f64 * 100.0 / s.db_size_quota as f64;
                    format!("{} ({used:.0}%)", bytes(s.db_size_quota))
                }),
                a.and_then(|a| a.epoch).map_or_else(dash, |v| v.to_string()),
                a.and_then(|a| {
                    let entries = a.lag_entries?;
                    Some(match a.lag_seconds {
                        Some(secs) => format!("{entries} entries, {}", duration(secs)),
                        None => format!("{entries} entries"),
                    })
                })
                .unwrap_or_else(dash),
                a.filter(|a| a.uploaded_index.is_some())
                    .map_or_else(dash, |a| a.snapshot_age_seconds.map_or_else(|| "none".to_string(), duration)),
                e.cert_not_after.as_deref().map_or_else(dash, |t| cert_expiry(t, now)),
                if errors.is_empty() { String::new() } else { errors.join("; ") },
            ]
        })
        .collect();
    let mut out = grid(&HEADERS, &rows);
    let name = |id: &str| {
        report
            .members
            .iter()
            .find(|m| m.id == id)
            .map_or_else(|| id.to_string(), |m| format!("{} ({id})", m.name))
    };
    match &report.leader {
        Some(id) => out.push_str(&format!("leader: {}\n", name(id))),
        None => out.push_str("leader: none\n"),
    }
    if !report.members.is_empty() {
        let list: Vec<String> = report.members.iter().map(|m| format!("{} {}", m.name, m.role)).collect();
        out.push_str(&format!("members: {}\n", list.join(", ")));
    }
    if let Some(e) = &report.cluster_error {
        out.push_str(&format!("members and alarms: {e}\n"));
    }
    if report.alarms.is_empty() {
        if report.cluster_error.is_none() && !report.members.is_empty() {
            out.push_str("alarms: none\n");
        }
    } else {
        let list: Vec<String> = report
            .alarms
            .iter()
            .map(|a| format!("{} on {}", a.alarm, name(&a.member_id)))
            .collect();
        out.push_str(&format!("alarms: {}\n", list.join(", ")));
    }
    out
}

/// An ASCII grid as etcdctl's tables.
fn grid(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let rule = {
        let parts: Vec<String> = widths.iter().map(|w| "-".repeat(w + 2)).collect();
        format!("+{}+\n", parts.join("+"))
    };
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let parts: Vec<String> = cells
            .zip(&widths)
            .map(|(c, w)| format!(" {c}{} ", " ".repeat(w - c.chars().count())))
            .collect();
        format!("|{}|\n", parts.join("|"))
    };
    let mut out = rule.clone();
    out.push_str(&line(&mut headers.iter().copied()));
    out.push_str(&rule);
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out.push_str(&rule);
    out
}

/// Bytes in SI units, as etcdctl prints sizes (`25 kB`, `2.1 GB`).
fn bytes(n: i64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v.abs() >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 || v >= 10.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A duration in seconds as `45s`, `3m20s`, `2h5m` or `3d4h`.
fn duration(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `2027-03-07 (89d left)` from an RFC 3339 time.
fn cert_expiry(rfc: &str, now: i64) -> String {
    let Ok(t) = time::OffsetDateTime::parse(rfc, &time::format_description::well_known::Rfc3339) else {
        return rfc.to_string();
    };
    let left = t.unix_timestamp() - now;
    let date = rfc.split('T').next().unwrap_or(rfc);
    if left < 0 {
        format!("{date} (EXPIRED)")
    } else {
        format!("{date} ({}d left)", left / 86_400)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP netsy_archive_epoch The archive epoch.
# TYPE netsy_archive_epoch gauge
netsy_archive_epoch 3
etcd_server_applied_index 120
netsy_archive_uploaded_index 100
netsy_archive_caught_up_timestamp_seconds 1000
netsy_archive_snapshot_index 90
netsy_archive_snapshot_timestamp_seconds 400
netsy_alarm_active{alarm="NOSPACE"} 1
netsy_tls_handshake_failures_total{listener="client", reason="a \"quoted\" \\ back\nslash"} 2 1700000000000
netsy_proposal_duration_seconds_bucket{le="+Inf"} +Inf
not a sample
{orphan="label"} 1
broken{label="unterminated} 1
"#;

    #[test]
    fn parses_the_text_format() {
        let samples = parse_metrics(TEXT);
        let names: Vec<&str> = samples.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "netsy_archive_epoch",
                "etcd_server_applied_index",
                "netsy_archive_uploaded_index",
                "netsy_archive_caught_up_timestamp_seconds",
                "netsy_archive_snapshot_index",
                "netsy_archive_snapshot_timestamp_seconds",
                "netsy_alarm_active",
                "netsy_tls_handshake_failures_total",
                "netsy_proposal_duration_seconds_bucket",
            ]
        );
        assert_eq!(samples[0].value, 3.0);
        assert_eq!(samples[6].labels, [("alarm".to_string(), "NOSPACE".to_string())]);
        assert_eq!(
            samples[7],
            Sample {
                name: "netsy_tls_handshake_failures_total".into(),
                labels: vec![
                    ("listener".into(), "client".into()),
                    ("reason".into(), "a \"quoted\" \\ back\nslash".into()),
                ],
                value: 2.0,
            }
        );
        assert_eq!(samples[8].value, f64::INFINITY);
    }

    #[test]
    fn the_leader_reports_lag_and_snapshot_age_the_others_only_their_epoch() {
        let samples = parse_metrics(TEXT);
        assert_eq!(
            archive_figures(&samples, true, 1010),
            Archive {
                epoch: Some(3),
                uploaded_index: Some(100),
                lag_entries: Some(20),
                lag_seconds: Some(10),
                snapshot_index: Some(90),
                snapshot_age_seconds: Some(610),
            }
        );
        assert_eq!(
            archive_figures(&samples, false, 1010),
            Archive {
                epoch: Some(3),
                uploaded_index: None,
                lag_entries: None,
                lag_seconds: None,
                snapshot_index: None,
                snapshot_age_seconds: None,
            }
        );
        // A leader that has not listed or taken a snapshot yet, nor finished an upload.
        let fresh = parse_metrics("netsy_archive_epoch 1\netcd_server_applied_index 5\nnetsy_archive_uploaded_index 0\nnetsy_archive_snapshot_timestamp_seconds 0\nnetsy_archive_caught_up_timestamp_seconds 0\n");
        let a = archive_figures(&fresh, true, 1010);
        assert_eq!(
            (a.lag_entries, a.lag_seconds, a.snapshot_age_seconds, a.snapshot_index),
            (Some(5), None, None, None)
        );
        // Not a netsy member: no figures at all.
        assert_eq!(archive_figures(&[], true, 1010).epoch, None);
    }

    fn row(endpoint: &str, name: &str, id: &str, role: &'static str) -> EndpointStatus {
        EndpointStatus {
            endpoint: endpoint.into(),
            member_id: Some(id.into()),
            name: Some(name.into()),
            role: Some(role),
            status: Some(EtcdStatus {
                version: "3.5.21".into(),
                leader: "a1".into(),
                raft_term: 4,
                raft_index: 120,
                raft_applied_index: 119,
                db_size: 181_000,
                db_size_in_use: 57_000,
                db_size_quota: 2 << 30,
                is_learner: false,
                errors: vec![],
            }),
            archive: Some(Archive {
                epoch: Some(2),
                uploaded_index: (role == "leader").then_some(100),
                lag_entries: (role == "leader").then_some(19),
                lag_seconds: (role == "leader").then_some(3),
                snapshot_index: None,
                snapshot_age_seconds: (role == "leader").then_some(3720),
            }),
            metrics_error: None,
            cert_not_after: Some("2027-03-07T16:54:42Z".into()),
            error: None,
        }
    }

    #[test]
    fn the_table_has_a_row_per_endpoint_then_leader_members_and_alarms() {
        let now = rfc3339_secs("2027-01-01T00:00:00Z");
        let report = Report {
            leader: Some("a1".into()),
            members: vec![
                Member {
                    id: "a1".into(),
                    name: "netsy-0".into(),
                    role: "leader",
                    peer_urls: vec![],
                    client_urls: vec!["https://h0:2378".into()],
                },
                Member {
                    id: "b2".into(),
                    name: "netsy-1".into(),
                    role: "follower",
                    peer_urls: vec![],
                    client_urls: vec!["https://h1:2378".into()],
                },
            ],
            alarms: vec![Alarm {
                member_id: "b2".into(),
                member: Some("netsy-1".into()),
                alarm: "NOSPACE".into(),
            }],
            endpoints: vec![
                row("https://h0:2378", "netsy-0", "a1", "leader"),
                row("https://h1:2378", "netsy-1", "b2", "follower"),
                EndpointStatus {
                    endpoint: "https://h2:2378".into(),
                    member_id: None,
                    name: None,
                    role: None,
                    status: None,
                    archive: None,
                    metrics_error: None,
                    cert_not_after: None,
                    error: Some("cannot connect".into()),
                },
            ],
            cluster_error: None,
        };
        assert!(report.failed());
        let text = table(&report, now);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("| ENDPOINT "), "{text}");
        for header in [
            "NAME",
            "ROLE",
            "TERM",
            "INDEX",
            "APPLIED",
            "DB SIZE",
            "QUOTA",
            "EPOCH",
            "ARCHIVE LAG",
            "SNAPSHOT AGE",
            "CERT EXPIRES",
            "ERRORS",
        ] {
            assert!(lines[1].contains(&format!(" {header} ")), "{header}: {text}");
        }
        let cells = |line: &str| -> Vec<String> { line.split('|').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect() };
        assert_eq!(
            cells(lines[3]),
            [
                "https://h0:2378",
                "netsy-0",
                "a1",
                "leader",
                "4",
                "120",
                "119",
                "181 kB (57 kB in use)",
                "2.1 GB (0%)",
                "2",
                "19 entries, 3s",
                "1h2m",
                "2027-03-07 (65d left)"
            ]
        );
        assert_eq!(cells(lines[4])[9..12], ["2", "-", "-"]);
        assert_eq!(
            cells(lines[5]),
            [
                "https://h2:2378",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                "cannot connect"
            ]
        );
        // Every line of the grid is as wide as the rule.
        assert!(lines[..7].iter().all(|l| l.chars().count() == lines[0].chars().count()), "{text}");
        assert_eq!(
            lines[7..],
            [
                "leader: netsy-0 (a1)",
                "members: netsy-0 leader, netsy-1 follower",
                "alarms: NOSPACE on netsy-1 (b2)"
            ]
        );
    }

    fn rfc3339_secs(t: &str) -> i64 {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .unwrap()
            .unix_timestamp()
    }

    #[test]
    fn sizes_durations_and_endpoints() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1500), "1.5 kB");
        assert_eq!(bytes(2 << 30), "2.1 GB");
        assert_eq!(bytes(25_000_000), "25 MB");
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(200), "3m20s");
        assert_eq!(duration(7500), "2h5m");
        assert_eq!(duration(3 * 86_400 + 4 * 3600), "3d4h");
        assert!(same_endpoint("https://127.0.0.1:2378/", "127.0.0.1:2378"));
        assert!(!same_endpoint("https://127.0.0.1:2378", "127.0.0.1:2379"));
        assert_eq!(
            cert_expiry("2027-01-01T00:00:00Z", rfc3339_secs("2027-01-02T00:00:00Z")),
            "2027-01-01 (EXPIRED)"
        );
    }
}
