//! The HTTP/JSON API's bodies and errors (docs/viewserver.md, "API"), shared
//! by the server and the client.

use serde::{Deserialize, Serialize};

use crate::service::{GuestEnd, MAX_SERVER_NAME, Ping, PingError};

/// `POST /ping` body. Only `server` and `viewnum` are required: a client
/// that sends nothing else gets the classic lab semantics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PingRequest {
    /// The sender's server name, as views name it (1–`MAX_SERVER_NAME` bytes, no control
    /// characters).
    pub server: String,
    /// The newest view the sender has received (0: none yet); a primary acknowledges a view by
    /// pinging with its number.
    pub viewnum: u64,
    /// The sender's process identity: nonzero, larger at every start (a smaller one than the
    /// service has seen is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<u64>,
    /// Increases with every ping of one incarnation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The view whose state the sender holds (0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holds: Option<u64>,
    /// The guest ended (the primary's report, once all its output was released).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<GuestEnd>,
    /// The sender, backup of this view number, lost its stream from the view's primary and
    /// asks to be promoted now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_lost: Option<u64>,
}

impl PingRequest {
    /// The state machine's view of this request.
    pub fn as_ping(&self) -> Ping<'_> {
        Ping {
            server: &self.server,
            incarnation: self.incarnation,
            seq: self.seq,
            viewnum: self.viewnum,
            holds: self.holds,
            finished: self.finished,
            primary_lost: self.primary_lost,
        }
    }
}

/// Every error answer's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub error: String,
    /// With 503 from a viewserver that does not lead: the one that does,
    /// if known, so a client can go there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

/// Why a request was not answered with a view.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The ping body is not valid JSON of a `PingRequest` or breaks its rules (empty or overlong
    /// name, incarnation 0): 400.
    #[error("{0}")]
    BadRequest(String),
    /// The service refuses the ping (a replaced incarnation): 409.
    #[error(transparent)]
    Refused(#[from] PingError),
    /// This viewserver does not act for the service (another leads, or none does yet): 503.
    #[error("this viewserver does not lead the view service{}", leader.as_ref().map(|l| format!("; {l} does")).unwrap_or_default())]
    NotLeader {
        /// The address of the viewserver that leads, if known.
        leader: Option<String>,
    },
    /// The service's state could not be loaded or stored, so nothing may be answered: 503.
    #[error("the view service cannot store its state: {0}")]
    Unavailable(String),
}

impl ApiError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Refused(_) => 409,
            ApiError::NotLeader { .. } | ApiError::Unavailable(_) => 503,
        }
    }

    /// The JSON body this error is answered with.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.to_string(),
            leader: match self {
                ApiError::NotLeader { leader } => leader.clone(),
                _ => None,
            },
        }
    }
}

/// Parses and checks a `POST /ping` body.
pub fn parse_ping(body: &[u8]) -> Result<PingRequest, ApiError> {
    let bad = |m: String| ApiError::BadRequest(format!("invalid ping body: {m}"));
    let p: PingRequest = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    if p.server.is_empty() {
        return Err(bad("server name is empty".to_string()));
    }
    if p.server.len() > MAX_SERVER_NAME {
        return Err(bad(format!(
            "server name of {} bytes exceeds {MAX_SERVER_NAME}",
            p.server.len()
        )));
    }
    if p.server.chars().any(char::is_control) {
        return Err(bad("server name contains control characters".to_string()));
    }
    if p.incarnation == Some(0) {
        return Err(bad("incarnation must be nonzero".to_string()));
    }
    Ok(p)
}

/// An error body as JSON text.
pub fn error_json(body: &ErrorBody) -> String {
    serde_json::to_string(body).unwrap_or_else(|_| r#"{"error":"internal error"}"#.to_string())
}
