//! Every refusal of the service, as Genesis Mesh 1.8.1's NA words it: one variant per
//! case, its `Display` the envelope's `message`, with its status and error code:
//! `{"error": {"code", "message", "details", "request_id"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::reply::{json_response, request_id};
use crate::core::CoreError;
use crate::mesh::auth;

/// Revocation reasons the NA accepts.
pub(super) const REASONS: [&str; 4] = ["key_compromise", "cessation_of_operation", "superseded", "unspecified"];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // Any route.
    #[error("The requested resource was not found")]
    NotFound,
    #[error("Request body exceeds {limit} bytes")]
    TooLarge {
        limit: usize,
        #[source]
        source: axum::Error,
    },
    #[error("Request body is not valid JSON")]
    InvalidJson(#[source] serde_json::Error),
    #[error("Too many requests")]
    RateLimited,
    #[error("keyspace unavailable: {0}")]
    Keyspace(#[from] CoreError),
    #[error("Response could not be encoded")]
    Encode(#[source] serde_json::Error),
    /// `/readyz`: the keyspace does not answer.
    #[error("Service not ready")]
    NotReady,

    // Operator authentication.
    #[error("Too many failed admin authentication attempts")]
    AdminThrottled,
    #[error("{0}")]
    AdminAuth(AdminAuthFailure),
    #[error("Operator key {0} lacks the required tier")]
    InsufficientTier(String),

    // Invites and operator keys.
    #[error("roles must be a list")]
    RolesNotAList,
    #[error("Invalid role: {0}")]
    InvalidRole(String),
    #[error("max_validity_hours must be a positive integer")]
    InvalidMaxValidityHours,
    #[error("token_expiry_hours must be a positive integer")]
    InvalidTokenExpiryHours,
    #[error("Unknown operator key {0}")]
    UnknownOperatorKey(String),
    #[error("Refusing to revoke the last active operator key")]
    LastActiveOperatorKey,

    // Enrollment: join, heartbeat, renew.
    #[error("{0}")]
    NodeAuth(NodeAuthFailure),
    #[error("validity_hours must be a positive integer")]
    InvalidValidityHours,
    #[error("node_public_key is required")]
    MissingNodePublicKey,
    #[error("invite_token is required")]
    MissingInviteToken,
    #[error("Invalid or expired invite token")]
    InvalidInviteToken,
    #[error("This node key was revoked for key compromise")]
    NodeKeyCompromised,
    #[error("The invite's roles are invalid")]
    InviteRolesInvalid,
    #[error("cert_id and node_public_key are required")]
    MissingCertificateIdentity,
    /// A node presenting a certificate the NA does not know (403; compare
    /// `CertificateNotFound`, an operator naming one, 404).
    #[error("Certificate not found")]
    UnknownCertificate,
    #[error("node_public_key does not match the certificate")]
    CertificateKeyMismatch,
    #[error("Certificate has been revoked")]
    CertificateRevoked,
    #[error("Certificate is not yet valid")]
    CertificateNotYetValid,
    #[error("Certificate has expired")]
    CertificateExpired,
    #[error("Certificate was renewed and its grace period is over")]
    CertificateSuperseded,
    #[error("Renewal cannot change the certificate's roles")]
    RenewalRoleChange,
    #[error("The certificate changed concurrently; retry")]
    ConcurrentRenewal,

    // Revocation and the CRL.
    #[error("cert_id is required")]
    MissingCertId,
    #[error("reason must be one of {}", REASONS.join(", "))]
    InvalidRevocationReason,
    #[error("Certificate {0} not found")]
    CertificateNotFound(String),
    #[error("The CRL changed concurrently too often; retry")]
    CrlConflict,
    #[error("CRL could not be built")]
    CrlUnavailable,

    // Policy.
    #[error("allowed_ports must be a list of port numbers")]
    InvalidAllowedPorts,
    #[error("allowed_services must be a list of strings")]
    InvalidAllowedServices,
    #[error("policy_id is required")]
    MissingPolicyId,
    #[error("Policy {0} not found")]
    PolicyNotFound(String),
}

/// Why an operator's request did not authenticate (401 `admin_auth_failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdminAuthFailure {
    #[error("Admin authentication header too long")]
    HeaderTooLong,
    #[error("Missing admin authentication headers")]
    MissingHeaders,
    /// Not configured, or revoked: the same answer.
    #[error("Unknown admin key")]
    UnknownKey,
    #[error("Admin request timestamp too old")]
    StaleTimestamp,
    #[error("Admin nonce already used")]
    NonceUsed,
    #[error("Invalid admin signature")]
    BadSignature,
}

/// Why a node's signed body did not authenticate (401 `node_auth_failed`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeAuthFailure {
    #[error("Missing authentication fields: {}", .0.join(", "))]
    MissingFields(Vec<&'static str>),
    #[error("Invalid timestamp format")]
    BadTimestamp,
    #[error("Request timestamp too old (window is {} seconds)", auth::WINDOW_SECS)]
    StaleTimestamp,
    #[error("Nonce already used (replay detected)")]
    Replay,
    #[error("Invalid signature")]
    BadSignature,
    #[error("Invalid node public key")]
    BadKey,
}

impl From<AdminAuthFailure> for Error {
    fn from(f: AdminAuthFailure) -> Error {
        Error::AdminAuth(f)
    }
}

impl From<NodeAuthFailure> for Error {
    fn from(f: NodeAuthFailure) -> Error {
        Error::NodeAuth(f)
    }
}

impl Error {
    pub fn status(&self) -> StatusCode {
        use Error::*;
        match self {
            InvalidJson(_)
            | RolesNotAList
            | InvalidRole(_)
            | InvalidMaxValidityHours
            | InvalidTokenExpiryHours
            | InvalidValidityHours
            | MissingNodePublicKey
            | InviteRolesInvalid
            | MissingCertificateIdentity
            | MissingCertId
            | InvalidRevocationReason
            | InvalidAllowedPorts
            | InvalidAllowedServices
            | MissingPolicyId => StatusCode::BAD_REQUEST,
            AdminAuth(_) | NodeAuth(_) => StatusCode::UNAUTHORIZED,
            InsufficientTier(_)
            | MissingInviteToken
            | InvalidInviteToken
            | NodeKeyCompromised
            | UnknownCertificate
            | CertificateKeyMismatch
            | CertificateRevoked
            | CertificateNotYetValid
            | CertificateExpired
            | CertificateSuperseded
            | RenewalRoleChange => StatusCode::FORBIDDEN,
            NotFound | UnknownOperatorKey(_) | CertificateNotFound(_) | PolicyNotFound(_) => StatusCode::NOT_FOUND,
            LastActiveOperatorKey | ConcurrentRenewal => StatusCode::CONFLICT,
            TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RateLimited | AdminThrottled => StatusCode::TOO_MANY_REQUESTS,
            Encode(_) | CrlUnavailable => StatusCode::INTERNAL_SERVER_ERROR,
            Keyspace(_) | NotReady | CrlConflict => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The envelope's `code`.
    pub fn code(&self) -> &'static str {
        use Error::*;
        match self {
            NotFound => "not_found",
            TooLarge { .. } => "request_too_large",
            InvalidJson(_) => "invalid_json",
            RateLimited => "rate_limited",
            Keyspace(_) => "service_unavailable",
            Encode(_) => "internal_error",
            NotReady => "service_not_ready",
            AdminThrottled => "admin_auth_throttled",
            AdminAuth(_) => "admin_auth_failed",
            InsufficientTier(_) => "insufficient_operator_tier",
            RolesNotAList | InvalidRole(_) | InviteRolesInvalid => "invalid_role",
            InvalidMaxValidityHours => "invalid_max_validity_hours",
            InvalidTokenExpiryHours => "invalid_token_expiry_hours",
            UnknownOperatorKey(_) => "unknown_operator_key",
            LastActiveOperatorKey => "last_active_operator_key",
            NodeAuth(_) => "node_auth_failed",
            InvalidValidityHours => "invalid_validity_hours",
            MissingNodePublicKey => "missing_node_public_key",
            MissingInviteToken => "missing_invite_token",
            InvalidInviteToken => "invalid_invite_token",
            NodeKeyCompromised => "node_key_compromised",
            MissingCertificateIdentity => "missing_certificate_identity",
            UnknownCertificate | CertificateNotFound(_) => "certificate_not_found",
            CertificateKeyMismatch => "certificate_key_mismatch",
            CertificateRevoked => "certificate_revoked",
            CertificateNotYetValid => "certificate_not_yet_valid",
            CertificateExpired => "certificate_expired",
            CertificateSuperseded => "certificate_superseded",
            RenewalRoleChange => "renewal_role_change_forbidden",
            ConcurrentRenewal => "concurrent_renewal",
            MissingCertId => "missing_cert_id",
            InvalidRevocationReason => "invalid_revocation_reason",
            CrlConflict => "conflict_retry",
            CrlUnavailable => "crl_unavailable",
            InvalidAllowedPorts => "invalid_allowed_ports",
            InvalidAllowedServices => "invalid_allowed_services",
            MissingPolicyId => "missing_policy_id",
            PolicyNotFound(_) => "policy_not_found",
        }
    }

    /// The envelope's `details`.
    fn details(&self) -> Value {
        match self {
            Error::InvalidJson(e) => json!({"reason": e.to_string()}),
            // The checks `/readyz` makes; the other two hold by construction.
            Error::NotReady => json!({"keyspace": false, "genesis_loaded": true, "na_key_matches_genesis": true}),
            _ => json!({}),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match &self {
            Error::Keyspace(e) => tracing::warn!(error = %crate::error_chain(e), "mesh authority: keyspace request failed"),
            Error::Encode(e) => tracing::error!(error = %e, "mesh authority: a response did not encode"),
            _ => {}
        }
        let envelope = json!({"error": {
            "code": self.code(),
            "message": self.to_string(),
            "details": self.details(),
            "request_id": request_id(),
        }});
        json_response(self.status(), &envelope)
    }
}
