//! Bodies of the probed-host endpoints (`/v1/hosts`): registration (with its checks) and
//! each host's view, with its damped status and recent probes.

use crate::error::{Error, Result};
use crate::limits::Limits;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/hosts` body.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostBody {
    /// Unique name: 1..=`limits.max_name_len` characters, none of them a control character.
    #[schema(pattern = r"^[^\x00-\x1f\x7f-\x9f]{1,128}$", min_length = 1, max_length = 128)]
    pub name: String,
    /// `http://` URL that answers 2xx when the host is healthy; at most `limits.max_url_len`
    /// bytes (else 413), its host allowed by `[health] allowed_hosts`.
    #[schema(pattern = "^[Hh][Tt][Tt][Pp]://")]
    pub health_url: String,
}

impl HostBody {
    /// Checks the name and the URL against the limits; returns the URL's host, which the
    /// server then checks against its `[health] allowed_hosts`.
    pub fn validate(&self, limits: &Limits) -> Result<String> {
        let chars = self.name.chars().count();
        if chars == 0 || chars > limits.max_name_len || self.name.chars().any(char::is_control) {
            return Err(Error::invalid(
                "name",
                format!(
                    "name must be 1..={} characters, none of them a control character",
                    limits.max_name_len
                ),
            ));
        }
        if self.health_url.len() > limits.max_url_len {
            return Err(Error::too_large(
                "health_url",
                format!("health_url is over {} bytes", limits.max_url_len),
            ));
        }
        let parsed = url::Url::parse(&self.health_url)
            .map_err(|e| Error::invalid("health_url", format!("not a URL: {e}")))?;
        match parsed.host_str() {
            Some(host) if parsed.scheme() == "http" => Ok(host.to_string()),
            _ => Err(Error::invalid("health_url", "health_url must be an http:// URL with a host")),
        }
    }
}

/// `GET /v1/hosts` answer.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct HostsResponse {
    /// Every registered host with its damped status and recent probes.
    pub hosts: Vec<HostView>,
}

/// Damped status of a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HostStatus {
    /// Not probed enough yet to say.
    Unknown,
    /// `host_up_after` good probes in a row.
    Up,
    /// `host_down_after` failed probes in a row.
    Down,
}

impl HostStatus {
    /// The wire name, e.g. `up`.
    pub fn as_str(self) -> &'static str {
        match self {
            HostStatus::Unknown => "unknown",
            HostStatus::Up => "up",
            HostStatus::Down => "down",
        }
    }
}

/// One probe's result.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProbeResult {
    /// When the probe started, epoch ms.
    pub at_ms: i64,
    /// 2xx within the timeout.
    pub ok: bool,
    /// Time to the answer (or to the timeout).
    pub latency_ms: u64,
    /// HTTP status, when one came back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// What went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A registered host with its probe state, as `GET /v1/hosts` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HostView {
    /// Unique name.
    pub name: String,
    /// The URL probed.
    pub health_url: String,
    /// Damped status.
    pub status: HostStatus,
    /// Failed probes in a row.
    pub consecutive_failures: u32,
    /// Good probes in a row.
    pub consecutive_successes: u32,
    /// Latest probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe: Option<ProbeResult>,
    /// When the status last changed, epoch ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_at_ms: Option<i64>,
    /// Recent probes, newest last.
    pub history: Vec<ProbeResult>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, url: &str) -> Result<String> {
        HostBody { name: name.into(), health_url: url.into() }.validate(&Limits::default())
    }

    #[test]
    fn a_host_needs_a_name_and_an_http_url() {
        assert_eq!(check("h", "http://Example.com:8080/health").unwrap(), "example.com");
        assert_eq!(check("", "http://x").unwrap_err().field.as_deref(), Some("name"));
        assert_eq!(check("h", "ftp://x").unwrap_err().field.as_deref(), Some("health_url"));
        assert!(check("h", "nope").unwrap_err().message.starts_with("not a URL: "));
        let long = format!("http://x/{}", "a".repeat(2048));
        assert_eq!(check("h", &long).unwrap_err().code.http_status(), 413);
    }
}
