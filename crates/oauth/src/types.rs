//! Public data types of the authorization server.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Wrong confirmation codes a remote approval tolerates: the last one denies it.
pub const MAX_WRONG_CODES: u32 = 5;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The time source (injectable so tests can expire codes, tokens and approvals without waiting).
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> Millis;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// Starts at `start_ms`.
    pub fn new(start_ms: Millis) -> Self {
        Self(AtomicI64::new(start_ms))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(duration_ms(by), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
}

pub(crate) fn duration_ms(d: Duration) -> Millis {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Scope that allows reading: lifecycle, lists, `resources/read`, `prompts/get`, sessions.
pub const SCOPE_READ: &str = "mcp:read";
/// Scope that allows `tools/call`.
pub const SCOPE_CALL: &str = "mcp:call";
/// Accepted and ignored: refresh tokens are always issued.
pub const SCOPE_OFFLINE: &str = "offline_access";

/// What a grant allows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Scopes {
    pub read: bool,
    pub call: bool,
}

impl Scopes {
    /// `mcp:read mcp:call`.
    pub const ALL: Scopes = Scopes {
        read: true,
        call: true,
    };

    /// Parses a space-separated scope string. Unknown scopes and `offline_access` are ignored; a request that names
    /// no MCP scope gets the default (`mcp:read mcp:call`).
    pub fn parse_requested(scope: Option<&str>) -> Scopes {
        let mut s = Scopes::default();
        for part in scope.unwrap_or("").split_ascii_whitespace() {
            match part {
                SCOPE_READ => s.read = true,
                SCOPE_CALL => s.call = true,
                _ => {}
            }
        }
        if s.is_empty() { Scopes::ALL } else { s }
    }

    /// Parses a stored/CLI scope string strictly: only `mcp:read`, `mcp:call` (and `offline_access`) are accepted.
    pub fn parse_strict(scope: &str) -> Result<Scopes, String> {
        let mut s = Scopes::default();
        for part in scope.split([' ', ',']).filter(|p| !p.is_empty()) {
            match part {
                SCOPE_READ | "read" => s.read = true,
                SCOPE_CALL | "call" => s.call = true,
                SCOPE_OFFLINE => {}
                other => {
                    return Err(format!(
                        "unknown scope {other:?}: use mcp:read and/or mcp:call"
                    ));
                }
            }
        }
        if s.is_empty() {
            return Err("no scope: use mcp:read and/or mcp:call".into());
        }
        Ok(s)
    }

    pub fn is_empty(self) -> bool {
        !self.read && !self.call
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.read, self.call) {
            (true, true) => f.write_str("mcp:read mcp:call"),
            (true, false) => f.write_str("mcp:read"),
            (false, true) => f.write_str("mcp:call"),
            (false, false) => Ok(()),
        }
    }
}

/// Which ingress a request arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ingress {
    /// The loopback gateway.
    Loopback,
    /// Anthropic's MCP tunnel.
    AnthropicTunnel,
    /// Airlock's relay.
    Relay,
}

impl Ingress {
    pub fn as_str(self) -> &'static str {
        match self {
            Ingress::Loopback => "loopback",
            Ingress::AnthropicTunnel => "anthropic_tunnel",
            Ingress::Relay => "relay",
        }
    }
}

/// Which authorization-server endpoint a request is for (decided by the gateway from the path).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// RFC 8414 metadata.
    AuthorizationServerMetadata,
    /// OpenID Connect discovery (same document).
    OpenIdConfiguration,
    /// `<issuer>/token`
    Token,
    /// `<issuer>/register`
    Register,
    /// `<issuer>/revoke`
    Revoke,
    /// `/_airlock/oauth/…`: the request path says which page. Served on loopback, and on a relay hostname when
    /// [`Config::remote_approval`] is on (the remote page: a confirmation code, no approve button).
    Pages,
}

/// Where an authorization-server request arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestContext {
    /// The server whose issuer the request is for; for [`Endpoint::Pages`]: `None` on loopback, the hostname's
    /// server on a tunnel/relay hostname (an authorization request there must name that server).
    pub server_id: Option<String>,
    pub endpoint: Endpoint,
    /// The issuer of that server on this ingress (for pages: the loopback origin).
    pub issuer: String,
    /// The resource URL of that server on this ingress (empty for pages).
    pub resource: String,
    /// The origin the request was sent to (`https://<host>` or `http://127.0.0.1:<port>`).
    pub origin: String,
    pub peer: Option<SocketAddr>,
    pub ingress: Ingress,
}

/// A resource URL mapped to its server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedResource {
    pub server_id: String,
    /// The issuer for that server on the ingress the URL names (put in `iss` of authorization responses).
    pub issuer: String,
}

/// Resource URL → server, supplied by the agent (the gateway's route table).
pub trait ResourceResolver: Send + Sync + 'static {
    /// The server a `resource` parameter names, or `None` if it names none.
    fn resolve(&self, resource: &str) -> Option<ResolvedResource>;
    /// A display name for the server (shown on the approval page), `None` if no such server exists (minting a
    /// token for it is refused).
    fn server_name(&self, server_id: &str) -> Option<String> {
        let _ = server_id;
        None
    }
}

/// What a verified access token allows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Access {
    pub grant_id: String,
    pub client_id: String,
    pub client_name: String,
    pub scopes: Scopes,
    /// `None`: every tool; `Some`: only these (for `tools/call`).
    pub tools: Option<Vec<String>>,
}

/// Why [`crate::AuthServer::verify`] refused a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the access token is not valid")]
    Invalid,
    #[error("the access token expired")]
    Expired,
    #[error("the access token was revoked")]
    Revoked,
    #[error("the access token was issued for another server")]
    WrongResource,
}

/// One MCP request for the audit log (never arguments or results).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct McpCall {
    pub server_id: String,
    pub grant_id: Option<String>,
    pub client_id: Option<String>,
    pub method: String,
    pub tool: Option<String>,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration: Duration,
    pub ingress: Ingress,
}

/// Tunables. [`Config::new`] gives the defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// The SQLite database file (created with its parent directory, mode 0600).
    pub db_path: PathBuf,
    /// Published `authorization_endpoint` (the loopback approval page,
    /// `http://127.0.0.1:<gateway port>/_airlock/oauth/authorize`).
    pub authorization_endpoint: String,
    /// Remote approval (default off): the metadata served on a relay hostname publishes the approval page on that
    /// same hostname (`<issuer origin>/_airlock/oauth/authorize`), for a browser elsewhere. That page shows a
    /// short confirmation code and cannot approve; approving ([`crate::AuthServer::decide`]) requires the code.
    /// Off: the pages are served on loopback only (404 elsewhere), and every ingress publishes the loopback page.
    /// The Anthropic tunnel always publishes the loopback page: its hostnames accept connections only from Claude,
    /// never from a browser.
    pub remote_approval: bool,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    /// A grant (and every token of it) ends at the latest this long after approval.
    pub grant_ttl: Duration,
    /// Authorization codes (≤ 60 s).
    pub code_ttl: Duration,
    /// A rotated refresh token still works this long (racing refreshes).
    pub refresh_grace: Duration,
    /// Pending approvals expire after this.
    pub approval_ttl: Duration,
    /// At most this many pending approvals at once.
    pub max_pending: usize,
    /// At most this many pending approvals per client.
    pub max_pending_per_client: usize,
    /// New pending approvals per minute (all clients).
    pub approvals_per_minute: u32,
    /// Token endpoint: requests per minute per peer address and in total.
    pub token_requests_per_minute: u32,
    /// Registration endpoint: registrations per minute per peer address and in total.
    pub registrations_per_minute: u32,
    /// Dynamically registered clients kept at most (the oldest without a grant are dropped first).
    pub max_dynamic_clients: usize,
}

impl Config {
    pub fn new(db_path: PathBuf, authorization_endpoint: String) -> Self {
        Self {
            db_path,
            authorization_endpoint,
            remote_approval: false,
            access_token_ttl: Duration::from_secs(3600),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            grant_ttl: Duration::from_secs(90 * 24 * 3600),
            code_ttl: Duration::from_secs(60),
            refresh_grace: Duration::from_secs(30),
            approval_ttl: Duration::from_secs(600),
            max_pending: 32,
            max_pending_per_client: 4,
            approvals_per_minute: 20,
            token_requests_per_minute: 120,
            registrations_per_minute: 20,
            max_dynamic_clients: 500,
        }
    }
}

/// The person's answer to a pending approval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Grant the requested scopes; `tools` narrows `tools/call` to these tools. `code`: the confirmation code a
    /// remote approval page shows (required for those, ignored otherwise; case, spaces and dashes do not matter).
    Approve {
        tools: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
    },
    Deny,
}

/// A pending (or just decided) authorization request, as the UI/CLI see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Approval {
    pub id: String,
    pub client_id: String,
    pub client_name: String,
    /// `cimd`, `dynamic` or `minted`.
    pub client_kind: String,
    /// The client ID metadata document URL (= `client_id`) for CIMD clients.
    pub cimd_url: Option<String>,
    pub redirect_uri: String,
    pub redirect_host: String,
    pub server_id: String,
    pub server_name: String,
    pub resource: String,
    pub scopes: Scopes,
    /// Tools asked for (`None`: all).
    pub tools: Option<Vec<String>>,
    pub created_ms: Millis,
    pub expires_ms: Millis,
    /// `pending`, `approved`, `denied`, `expired`.
    pub state: String,
    /// Opened on a relay hostname (a browser elsewhere): approving requires the confirmation code that page shows
    /// (never part of this record).
    pub remote: bool,
}

/// What the agent's event stream gets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    ApprovalPending {
        approval: Box<Approval>,
    },
    ApprovalDecided {
        id: String,
        approved: bool,
    },
    ApprovalExpired {
        id: String,
    },
    GrantIssued {
        grant_id: String,
        client_id: String,
        server_id: String,
    },
    GrantRevoked {
        grant_id: String,
    },
    TokenRevoked {
        token_id: String,
    },
}

/// A grant as listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GrantInfo {
    pub id: String,
    pub client_id: String,
    pub server_id: String,
    pub resource: String,
    pub scopes: Scopes,
    pub tools: Option<Vec<String>>,
    pub created_ms: Millis,
    pub expires_ms: Millis,
    pub last_used_ms: Option<Millis>,
    pub revoked_ms: Option<Millis>,
    pub label: Option<String>,
    /// Live (unexpired, unrevoked) tokens of this grant.
    pub tokens: Vec<TokenInfo>,
}

/// A token as listed (never the token itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    pub id: String,
    /// `access` or `refresh`.
    pub kind: String,
    pub created_ms: Millis,
    pub expires_ms: Millis,
    pub last_used_ms: Option<Millis>,
}

/// A client with its grants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClientInfo {
    pub client_id: String,
    pub kind: String,
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub created_ms: Millis,
    pub grants: Vec<GrantInfo>,
}

/// A minted token: the plaintext is only here, once.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct MintedToken {
    pub token: String,
    pub token_id: String,
    pub grant_id: String,
    pub client_id: String,
    pub server_id: String,
    pub expires_ms: Millis,
}

impl fmt::Debug for MintedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MintedToken")
            .field("token", &"<redacted>")
            .field("token_id", &self.token_id)
            .field("grant_id", &self.grant_id)
            .field("server_id", &self.server_id)
            .field("expires_ms", &self.expires_ms)
            .finish()
    }
}

/// What [`crate::AuthServer::revoke`] revoked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Revoked {
    pub grants: Vec<String>,
    pub tokens: Vec<String>,
}

/// Errors of the library API (HTTP endpoints answer with OAuth error documents instead).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("OAuth database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("OAuth database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("could not create {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the OAuth database thread stopped; restart the agent")]
    Closed,
    #[error(
        "no pending approval {0:?} (it may have expired or been decided already): list them with `airlock approvals`"
    )]
    UnknownApproval(String),
    #[error("approval {0:?} was already decided; each request is decided once")]
    AlreadyDecided(String),
    #[error(
        "this request was opened in a browser elsewhere: enter the code it shows (`airlock approve {0} --code XXXX-XXXX`)"
    )]
    CodeRequired(String),
    #[error(
        "wrong code: this request was opened in a browser elsewhere: enter the code it shows ({left} attempt(s) left)"
    )]
    WrongCode { id: String, left: u32 },
    #[error(
        "wrong code again: request {0:?} was denied after {MAX_WRONG_CODES} wrong codes; start again from the application"
    )]
    TooManyWrongCodes(String),
    #[error("nothing to revoke with id {0:?}: list grants and tokens with `airlock clients`")]
    UnknownId(String),
    #[error("unknown server {0:?}: list servers with `airlock status`")]
    UnknownServer(String),
    #[error("{0}")]
    Invalid(String),
}
