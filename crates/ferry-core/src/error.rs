//! The one error type shared by the store, the server and the client.
//!
//! Every error carries a stable snake_case `code`, a human `message` and, where it concerns an
//! input, the `field` path. The HTTP layer maps [`ErrorCode`] to a status; nothing else does.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Result alias so every ferry API speaks the same error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Stable classes of failure; clients branch on these, so they never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed request (bad JSON, wrong types): 400.
    BadRequest,
    /// Well-formed but semantically invalid input: 422.
    ValidationFailed,
    /// Missing or invalid credentials: 401.
    Unauthorized,
    /// Credentials without the needed scope: 403.
    Forbidden,
    /// The job (or other object) does not exist: 404.
    NotFound,
    /// The lease token is not the job's current one (fencing): 409.
    StaleLease,
    /// The operation does not apply to the object's current state: 409.
    InvalidState,
    /// The thing to create exists already.
    Conflict,
    /// A write's `expected_version` is not the item's (or paths it touches changed): 409.
    VersionConflict,
    /// An `If-Match` precondition does not hold: 412.
    PreconditionFailed,
    /// The server requires a precondition on this write: 428.
    PreconditionRequired,
    /// A size limit was exceeded: 413.
    PayloadTooLarge,
    /// A request body that is not `application/json`: 415.
    UnsupportedMediaType,
    /// The client did not send its request (body) in time: 408.
    RequestTimeout,
    /// The request target (path and query) is too long: 414.
    UriTooLong,
    /// The request headers are too large: 431.
    HeadersTooLarge,
    /// Too many requests from one client: 429.
    RateLimited,
    /// The queue holds its maximum of ready + scheduled jobs (backpressure): 429.
    QueueFull,
    /// The server has its maximum of pending writes or requests in flight: 503.
    ServerSaturated,
    /// The database failed repeatedly; requests fail fast until a probe succeeds: 503.
    CircuitOpen,
    /// The database refuses work for now (outage, saturation): 503.
    Unavailable,
    /// The database was written by a newer ferry: refuse rather than corrupt it.
    SchemaTooNew,
    /// A bug or an unexpected storage failure: 500.
    Internal,
}

impl ErrorCode {
    /// Every code, in declaration order (the test below fails when one is missing).
    pub const ALL: [ErrorCode; 23] = [
        ErrorCode::BadRequest,
        ErrorCode::ValidationFailed,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::StaleLease,
        ErrorCode::InvalidState,
        ErrorCode::Conflict,
        ErrorCode::VersionConflict,
        ErrorCode::PreconditionFailed,
        ErrorCode::PreconditionRequired,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::RequestTimeout,
        ErrorCode::UriTooLong,
        ErrorCode::HeadersTooLarge,
        ErrorCode::RateLimited,
        ErrorCode::QueueFull,
        ErrorCode::ServerSaturated,
        ErrorCode::CircuitOpen,
        ErrorCode::Unavailable,
        ErrorCode::SchemaTooNew,
        ErrorCode::Internal,
    ];

    /// The wire name, e.g. `stale_lease`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::ValidationFailed => "validation_failed",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::StaleLease => "stale_lease",
            ErrorCode::InvalidState => "invalid_state",
            ErrorCode::Conflict => "conflict",
            ErrorCode::VersionConflict => "version_conflict",
            ErrorCode::PreconditionFailed => "precondition_failed",
            ErrorCode::PreconditionRequired => "precondition_required",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::UriTooLong => "uri_too_long",
            ErrorCode::HeadersTooLarge => "headers_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::ServerSaturated => "server_saturated",
            ErrorCode::CircuitOpen => "circuit_open",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::SchemaTooNew => "schema_too_new",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status this class of error is answered with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::ValidationFailed => 422,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::StaleLease
            | ErrorCode::InvalidState
            | ErrorCode::Conflict
            | ErrorCode::VersionConflict => 409,
            ErrorCode::PreconditionFailed => 412,
            ErrorCode::PreconditionRequired => 428,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::UriTooLong => 414,
            ErrorCode::HeadersTooLarge => 431,
            ErrorCode::RateLimited | ErrorCode::QueueFull => 429,
            ErrorCode::Unavailable | ErrorCode::ServerSaturated | ErrorCode::CircuitOpen => 503,
            ErrorCode::SchemaTooNew | ErrorCode::Internal => 500,
        }
    }
}

/// A ferry error: what went wrong, for whom, and where in the input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Error {
    /// Stable class, see [`ErrorCode`].
    pub code: ErrorCode,
    /// One human sentence.
    pub message: String,
    /// Path of the offending input field, e.g. `jobs[3].queue`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Character offset of the error inside the field's text (a cron expression), from 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
    /// Machine-readable context a client acts on (a conflict's current version, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

impl Error {
    /// Builds an error without a field.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error { code, message: message.into(), field: None, position: None, details: None }
    }

    /// Builds a 422 for one input field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error {
            code: ErrorCode::ValidationFailed,
            message: message.into(),
            field: Some(field.into()),
            position: None,
            details: None,
        }
    }

    /// Builds a 413 for one input field.
    pub fn too_large(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error {
            code: ErrorCode::PayloadTooLarge,
            message: message.into(),
            field: Some(field.into()),
            position: None,
            details: None,
        }
    }

    /// The job does not exist.
    pub fn job_not_found(id: impl fmt::Display) -> Self {
        Error::new(ErrorCode::NotFound, format!("job {id} not found"))
    }

    /// The presented lease is not current.
    pub fn stale_lease(id: impl fmt::Display) -> Self {
        Error::new(
            ErrorCode::StaleLease,
            format!("lease for job {id} is not current (expired, or the job was re-leased or finished)"),
        )
    }

    /// A storage failure the caller may retry.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Unavailable, message)
    }

    /// An unexpected failure.
    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Internal, message)
    }

    /// Adds machine-readable context for the client (an object).
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Notes where in the field's text the error is.
    pub fn at(mut self, position: usize) -> Self {
        self.position = Some(position);
        self
    }

    /// Prefixes the field path, e.g. `queue` becomes `jobs[3].queue`.
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = Some(match self.field.take() {
            Some(f) if f.starts_with('[') => format!("{prefix}{f}"),
            Some(f) => format!("{prefix}.{f}"),
            None => prefix.to_string(),
        });
        self
    }
}

/// Why a storage call failed, as far as the database says: the advisor and the runbook pick
/// the remedy by it (a full disk wants space, a busy writer wants capacity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageFault {
    /// No space left (SQLite `SQLITE_FULL`, PostgreSQL `53100`).
    DiskFull,
    /// The database refuses writes (a read-only file or mount, or a PostgreSQL standby).
    ReadOnly,
    /// The operating system failed a read or write, or could not open the file.
    Io,
    /// A lock or the writer stayed busy past its timeout, or a serialization conflict.
    Busy,
    /// The database server cannot be reached (down, restarting, failing over).
    Unreachable,
    /// Anything else (an unexpected database error).
    Other,
}

impl StorageFault {
    /// Every fault, in wire order.
    pub const ALL: [StorageFault; 6] = [
        StorageFault::DiskFull,
        StorageFault::ReadOnly,
        StorageFault::Io,
        StorageFault::Busy,
        StorageFault::Unreachable,
        StorageFault::Other,
    ];

    /// The wire name in `details.storage_fault`, e.g. `disk_full`.
    pub fn as_str(self) -> &'static str {
        match self {
            StorageFault::DiskFull => "disk_full",
            StorageFault::ReadOnly => "read_only",
            StorageFault::Io => "io_error",
            StorageFault::Busy => "busy",
            StorageFault::Unreachable => "unreachable",
            StorageFault::Other => "other",
        }
    }

    /// Whether the fault lies in the volume or file itself (fixed by the operator, not by
    /// more capacity).
    pub fn is_storage(self) -> bool {
        matches!(self, StorageFault::DiskFull | StorageFault::ReadOnly | StorageFault::Io)
    }
}

impl Error {
    /// Notes the storage fault behind this error in `details.storage_fault`.
    pub fn with_fault(self, fault: StorageFault) -> Self {
        self.with_details(serde_json::json!({ "storage_fault": fault.as_str() }))
    }

    /// The storage fault noted by [`Error::with_fault`], if any.
    pub fn storage_fault(&self) -> Option<StorageFault> {
        let name = self.details.as_ref()?.get("storage_fault")?.as_str()?;
        StorageFault::ALL.into_iter().find(|f| f.as_str() == name)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: {} (field {field})", self.code.as_str(), self.message),
            None => write!(f, "{}: {}", self.code.as_str(), self.message),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Position in [`ErrorCode::ALL`]; exhaustive, so a new code fails to compile here until it
    /// is listed (and given its status below).
    fn index(c: ErrorCode) -> usize {
        match c {
            ErrorCode::BadRequest => 0,
            ErrorCode::ValidationFailed => 1,
            ErrorCode::Unauthorized => 2,
            ErrorCode::Forbidden => 3,
            ErrorCode::NotFound => 4,
            ErrorCode::StaleLease => 5,
            ErrorCode::InvalidState => 6,
            ErrorCode::Conflict => 7,
            ErrorCode::VersionConflict => 8,
            ErrorCode::PreconditionFailed => 9,
            ErrorCode::PreconditionRequired => 10,
            ErrorCode::PayloadTooLarge => 11,
            ErrorCode::UnsupportedMediaType => 12,
            ErrorCode::RequestTimeout => 13,
            ErrorCode::UriTooLong => 14,
            ErrorCode::HeadersTooLarge => 15,
            ErrorCode::RateLimited => 16,
            ErrorCode::QueueFull => 17,
            ErrorCode::ServerSaturated => 18,
            ErrorCode::CircuitOpen => 19,
            ErrorCode::Unavailable => 20,
            ErrorCode::SchemaTooNew => 21,
            ErrorCode::Internal => 22,
        }
    }

    #[test]
    fn every_code_has_one_pinned_status_and_wire_name() {
        let pinned: [(&str, u16); 23] = [
            ("bad_request", 400),
            ("validation_failed", 422),
            ("unauthorized", 401),
            ("forbidden", 403),
            ("not_found", 404),
            ("stale_lease", 409),
            ("invalid_state", 409),
            ("conflict", 409),
            ("version_conflict", 409),
            ("precondition_failed", 412),
            ("precondition_required", 428),
            ("payload_too_large", 413),
            ("unsupported_media_type", 415),
            ("request_timeout", 408),
            ("uri_too_long", 414),
            ("headers_too_large", 431),
            ("rate_limited", 429),
            ("queue_full", 429),
            ("server_saturated", 503),
            ("circuit_open", 503),
            ("unavailable", 503),
            ("schema_too_new", 500),
            ("internal", 500),
        ];
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(index(*code), i, "ErrorCode::ALL is in declaration order");
            assert_eq!((code.as_str(), code.http_status()), pinned[i], "{code:?}");
            let wire = serde_json::to_value(code).unwrap();
            assert_eq!(wire, code.as_str(), "serde and as_str agree");
            assert_eq!(serde_json::from_value::<ErrorCode>(wire).unwrap(), *code);
        }
    }

    #[test]
    fn details_are_optional_on_the_wire() {
        let plain = serde_json::to_value(Error::new(ErrorCode::Conflict, "taken")).unwrap();
        assert!(plain.get("details").is_none());
        let e = Error::new(ErrorCode::Conflict, "taken").with_details(serde_json::json!({"current": 3}));
        let wire = serde_json::to_value(&e).unwrap();
        assert_eq!(wire["details"]["current"], 3);
        assert_eq!(serde_json::from_value::<Error>(wire).unwrap(), e);
    }

    #[test]
    fn storage_faults_round_trip_through_details() {
        for f in StorageFault::ALL {
            let e = Error::unavailable("x").with_fault(f);
            let wire: Error = serde_json::from_value(serde_json::to_value(&e).unwrap()).unwrap();
            assert_eq!(wire.storage_fault(), Some(f));
        }
        assert_eq!(Error::unavailable("x").storage_fault(), None);
    }
}
