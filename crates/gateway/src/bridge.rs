//! stdio → Streamable HTTP bridge: child supervisor + proxy service.
//!
//! One shared child per exposed server. HTTP sessions (legacy) and stateless requests (modern)
//! each get a [`ProxyService`] from rmcp's `StreamableHttpService`; every request is re-issued to
//! the child through the child's `Peer<RoleClient>`, which assigns fresh JSON-RPC ids and progress
//! tokens. [`Shared`] remembers which HTTP request each child request belongs to so that progress
//! notifications and server→client requests find their way back.

// Logging/sampling/roots are deprecated by SEP-2577 but legacy children still use them.
#![allow(deprecated)]

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::body::Body;
use rand::Rng;
use rmcp::{
    ErrorData as McpError, RoleClient, RoleServer, ServerHandler,
    model::Tool,
    model::{
        CallToolRequestParams, CallToolResponse, CancelTaskParams, CancelledNotificationParam,
        ClientCapabilities, ClientConfig, ClientNotification, ClientRequest, ClientResult,
        CompleteRequestParams, CompleteResult, CustomNotification, CustomRequest, CustomResult,
        DiscoverResult, GetMeta, GetPromptRequestParams, GetPromptResponse, GetTaskParams,
        GetTaskResult, Implementation, InitializeRequestParams, InitializeResult,
        ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult, ListToolsResult,
        Notification, PaginatedRequestParams, ProgressToken, ProtocolVersion,
        ReadResourceRequestParams, ReadResourceResponse, Request, RequestId, RequestOptionalParam,
        ResultType, ServerCapabilities, ServerConfig, ServerNotification, ServerPeerInfo,
        ServerRequest, ServerResult, SetLevelRequestParams, SubscribeRequestParams,
        SubscriptionFilter, UnsubscribeRequestParams, UpdateTaskParams,
    },
    service::{
        ClientInitializeError, ClientLifecycleMode, ClientServiceExt, NotificationContext,
        OriginatingRequestId, Peer, PeerRequestOptions, RequestContext, Service, ServiceError,
        SubscriptionContext, SubscriptionSink,
    },
    transport::{
        TokioChildProcess,
        streamable_http_server::{
            StreamableHttpServerConfig, StreamableHttpService,
            session::{SessionManager, local::LocalSessionManager},
        },
    },
};
use tokio::{io::AsyncReadExt, sync::watch};
use tokio_util::sync::CancellationToken;

use crate::{GatewayOptions, Health, StatusReporter, ingress::json_error, lock};

/// How long a request waits for a (re)starting child before failing.
const READY_WAIT: Duration = Duration::from_secs(30);
/// Spawn + era probe (`server/discover` then `initialize`) budget; `npx -y` may download first.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
/// A child that stayed up this long resets the backoff.
const HEALTHY_RESET: Duration = Duration::from_secs(60);
/// Server→client requests forwarded to an HTTP session give up after this.
const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// stderr lines are truncated to this many bytes.
const STDERR_LINE_MAX: usize = 2048;
/// After draining, how long answers get to reach their HTTP streams before those are closed.
const FLUSH_GRACE: Duration = Duration::from_millis(300);
/// Upper bound of the tool cache.
const MAX_CACHED_TOOLS: usize = 4096;
/// Prune the session → generation map when it grows this large.
const SESSION_PRUNE_AT: usize = 1024;
const META_PREFIX_MODERN: &str = "io.modelcontextprotocol/";

#[derive(Clone, Debug)]
pub(crate) struct StdioSpec {
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
}

/// The currently running, probed child.
struct ChildHandle {
    generation: u64,
    peer: Peer<RoleClient>,
    info: Arc<ServerPeerInfo>,
    legacy: bool,
}

/// Which HTTP request a child request belongs to.
struct InFlight {
    session: u64,
    session_peer: Peer<RoleServer>,
    client_request_id: RequestId,
    client_progress: Option<ProgressToken>,
}

type InFlightKey = (u64, RequestId);

pub(crate) struct Shared {
    route_id: String,
    child: watch::Sender<Option<Arc<ChildHandle>>>,
    generation: AtomicU64,
    next_uid: AtomicU64,
    inflight: std::sync::Mutex<HashMap<InFlightKey, InFlight>>,
    progress: std::sync::Mutex<HashMap<(u64, ProgressToken), RequestId>>,
    inflight_count: watch::Sender<usize>,
    /// Legacy sessions (by proxy uid) for broadcasts such as list_changed.
    sessions: std::sync::Mutex<HashMap<u64, Peer<RoleServer>>>,
    /// Modern `subscriptions/listen` streams.
    listeners: std::sync::Mutex<HashMap<u64, SubscriptionSink>>,
    /// Session id → child generation it was minted under.
    session_gens: std::sync::Mutex<HashMap<String, u64>>,
    session_manager: Arc<LocalSessionManager>,
    last_stderr: std::sync::Mutex<Option<String>>,
    /// The child's tools (for rmcp's `Mcp-Param-*` header validation), refreshed on every
    /// forwarded `tools/list`, cleared on list_changed and restarts.
    tools: std::sync::Mutex<HashMap<String, Tool>>,
    stopping: CancellationToken,
}

impl Shared {
    fn current_child(&self) -> Option<Arc<ChildHandle>> {
        self.child.borrow().clone()
    }

    async fn wait_child(&self) -> Result<Arc<ChildHandle>, McpError> {
        let mut rx = self.child.subscribe();
        let wait = async {
            match rx.wait_for(Option::is_some).await {
                Ok(guard) => guard.clone(),
                Err(_) => None,
            }
        };
        tokio::select! {
            r = tokio::time::timeout(READY_WAIT, wait) => match r {
                Ok(Some(child)) => Ok(child),
                _ => Err(McpError::internal_error(
                    "the MCP server behind this gateway is not running (starting or restarting); retry shortly",
                    None,
                )),
            },
            _ = self.stopping.cancelled() => Err(McpError::internal_error(
                "the MCP server behind this gateway is stopping",
                None,
            )),
        }
    }

    fn register(
        self: &Arc<Self>,
        key: InFlightKey,
        progress: ProgressToken,
        entry: InFlight,
    ) -> InFlightGuard {
        lock(&self.inflight).insert(key.clone(), entry);
        lock(&self.progress).insert((key.0, progress.clone()), key.1.clone());
        self.inflight_count.send_modify(|n| *n += 1);
        InFlightGuard {
            shared: self.clone(),
            key,
            progress,
        }
    }

    /// The single session with requests in flight on `generation`, if exactly one.
    fn sole_inflight_session(&self, generation: u64) -> Option<(Peer<RoleServer>, RequestId)> {
        let map = lock(&self.inflight);
        let mut found: Option<(u64, &InFlight)> = None;
        for ((g, _), entry) in map.iter() {
            if *g != generation {
                continue;
            }
            match found {
                None => found = Some((entry.session, entry)),
                Some((uid, _)) if uid == entry.session => {}
                Some(_) => return None,
            }
        }
        found.map(|(_, e)| (e.session_peer.clone(), e.client_request_id.clone()))
    }

    fn remember_tools(&self, tools: &[Tool], replace: bool) {
        let mut map = lock(&self.tools);
        if replace {
            map.clear();
        }
        let room = MAX_CACHED_TOOLS.saturating_sub(map.len());
        for t in tools.iter().take(room) {
            map.insert(t.name.to_string(), t.clone());
        }
    }

    fn broadcast_peers(&self) -> Vec<Peer<RoleServer>> {
        lock(&self.sessions).values().cloned().collect()
    }

    fn listeners(&self) -> Vec<SubscriptionSink> {
        lock(&self.listeners).values().cloned().collect()
    }

    /// Closes every HTTP session minted under a generation `<= up_to`.
    async fn close_stale_sessions(&self, up_to: u64) {
        let stale: Vec<String> = {
            let mut gens = lock(&self.session_gens);
            let stale = gens
                .iter()
                .filter(|(_, g)| **g <= up_to)
                .map(|(id, _)| id.clone())
                .collect::<Vec<_>>();
            gens.retain(|_, g| *g > up_to);
            stale
        };
        for id in stale {
            let sid: rmcp::transport::common::server_side_http::SessionId = id.into();
            if let Err(e) = self.session_manager.close_session(&sid).await {
                tracing::debug!(route = %self.route_id, "closing stale session: {e}");
            }
        }
    }
}

struct InFlightGuard {
    shared: Arc<Shared>,
    key: InFlightKey,
    progress: ProgressToken,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        lock(&self.shared.inflight).remove(&self.key);
        lock(&self.shared.progress).remove(&(self.key.0, self.progress.clone()));
        self.shared
            .inflight_count
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}

fn map_service_error(e: ServiceError) -> McpError {
    match e {
        ServiceError::McpError(e) => e,
        ServiceError::TransportClosed => McpError::internal_error(
            "the MCP server process exited before answering; it is being restarted, retry the request",
            None,
        ),
        other => McpError::internal_error(format!("gateway bridge error: {other}"), None),
    }
}

/// 2026-07-28 results carry `resultType`; a legacy child's results do not.
fn fill_result_type(result: &mut ServerResult) {
    let slot = match result {
        ServerResult::CompleteResult(r) => &mut r.result_type,
        ServerResult::GetPromptResult(r) => &mut r.result_type,
        ServerResult::ListPromptsResult(r) => &mut r.result_type,
        ServerResult::ListResourcesResult(r) => &mut r.result_type,
        ServerResult::ListResourceTemplatesResult(r) => &mut r.result_type,
        ServerResult::ReadResourceResult(r) => &mut r.result_type,
        ServerResult::ListToolsResult(r) => &mut r.result_type,
        ServerResult::CallToolResult(r) => &mut r.result_type,
        _ => return,
    };
    slot.get_or_insert(ResultType::COMPLETE);
}

fn reinterpret<T: serde::de::DeserializeOwned>(result: ServerResult) -> Result<T, McpError> {
    let value = serde_json::to_value(&result)
        .map_err(|e| McpError::internal_error(format!("re-encoding result: {e}"), None))?;
    serde_json::from_value(value).map_err(|e| {
        McpError::internal_error(
            format!("the MCP server returned an unexpected result: {e}"),
            None,
        )
    })
}

macro_rules! expect_result {
    ($result:expr, $variant:ident) => {
        match $result {
            ServerResult::$variant(r) => Ok(r),
            other => reinterpret(other),
        }
    };
}

/// The HTTP-facing proxy: one per legacy session / per stateless request.
pub(crate) struct ProxyService {
    shared: Arc<Shared>,
    uid: u64,
}

impl ProxyService {
    fn new(shared: Arc<Shared>) -> Self {
        let uid = shared.next_uid.fetch_add(1, Ordering::Relaxed);
        Self { shared, uid }
    }

    async fn forward(
        &self,
        mut request: ClientRequest,
        context: &RequestContext<RoleServer>,
    ) -> Result<ServerResult, McpError> {
        let child = self.shared.wait_child().await?;
        if context.peer.peer_info().is_some() {
            // A legacy session: remember it for broadcasts (in case `initialized` never came).
            lock(&self.shared.sessions)
                .entry(self.uid)
                .or_insert_with(|| context.peer.clone());
        }
        let mut meta = context.meta.clone();
        let client_progress = meta.get_progress_token();
        meta.remove("progressToken");
        if child.legacy {
            meta.retain(|k, _| !k.starts_with(META_PREFIX_MODERN));
        }
        *request.get_meta_mut() = meta;
        let handle = child
            .peer
            .send_request_with_option(request, PeerRequestOptions::no_options())
            .await
            .map_err(map_service_error)?;
        let child_id = handle.id.clone();
        let _guard = self.shared.register(
            (child.generation, child_id.clone()),
            handle.progress_token.clone(),
            InFlight {
                session: self.uid,
                session_peer: context.peer.clone(),
                client_request_id: context.id.clone(),
                client_progress,
            },
        );
        let modern_client = context
            .meta
            .protocol_version()
            .is_some_and(|v| !v.has_initialize());
        tokio::select! {
            r = handle.await_response() => {
                let mut r = r.map_err(map_service_error)?;
                if modern_client {
                    fill_result_type(&mut r);
                }
                Ok(r)
            }
            _ = context.ct.cancelled() => {
                let note = ClientNotification::CancelledNotification(Notification::new(
                    CancelledNotificationParam::new(Some(child_id), Some("cancelled by the HTTP client".into())),
                ));
                let _ = child.peer.send_notification(note).await;
                Err(McpError::internal_error("request cancelled", None))
            }
        }
    }

    async fn notify_child(&self, notification: ClientNotification) {
        if let Some(child) = self.shared.current_child()
            && let Err(e) = child.peer.send_notification(notification).await
        {
            tracing::debug!(route = %self.shared.route_id, "forwarding notification: {e}");
        }
    }
}

impl Drop for ProxyService {
    fn drop(&mut self) {
        lock(&self.shared.sessions).remove(&self.uid);
        lock(&self.shared.listeners).remove(&self.uid);
    }
}

fn info_from_child(child: Option<&ChildHandle>) -> ServerConfig {
    match child {
        Some(c) => {
            let mut info = ServerConfig::new(c.info.capabilities.clone());
            info.server_info = c.info.server_info.clone().unwrap_or_else(bridge_impl);
            info.instructions = c.info.instructions.clone();
            info
        }
        None => {
            let mut info = ServerConfig::new(ServerCapabilities::default());
            info.server_info = bridge_impl();
            info
        }
    }
}

fn bridge_impl() -> Implementation {
    Implementation::new("airlock-gateway", env!("CARGO_PKG_VERSION"))
}

#[allow(deprecated)]
impl ServerHandler for ProxyService {
    fn get_info(&self) -> ServerConfig {
        info_from_child(self.shared.current_child().as_deref())
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, McpError> {
        self.shared.wait_child().await?;
        context.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

    async fn discover(
        &self,
        _context: RequestContext<RoleServer>,
    ) -> Result<DiscoverResult, McpError> {
        let child = self.shared.wait_child().await?;
        Ok(DiscoverResult::from_server_info(
            ServerHandler::supported_protocol_versions(self).into_owned(),
            info_from_child(Some(&child)),
        ))
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        let r = self
            .forward(
                ClientRequest::CompleteRequest(Request::new(request)),
                &context,
            )
            .await?;
        expect_result!(r, CompleteResult)
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.forward(
            ClientRequest::SetLevelRequest(Request::new(request)),
            &context,
        )
        .await
        .map(|_| ())
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        let r = self
            .forward(
                ClientRequest::GetPromptRequest(Request::new(request)),
                &context,
            )
            .await?;
        match r {
            ServerResult::GetPromptResult(r) => Ok(GetPromptResponse::Complete(r)),
            ServerResult::InputRequiredResult(r) => Ok(GetPromptResponse::InputRequired(r)),
            other => reinterpret(other).map(GetPromptResponse::Complete),
        }
    }

    async fn list_prompts(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        let r = self
            .forward(
                ClientRequest::ListPromptsRequest(optional(request)),
                &context,
            )
            .await?;
        expect_result!(r, ListPromptsResult)
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let r = self
            .forward(
                ClientRequest::ListResourcesRequest(optional(request)),
                &context,
            )
            .await?;
        expect_result!(r, ListResourcesResult)
    }

    async fn list_resource_templates(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        let r = self
            .forward(
                ClientRequest::ListResourceTemplatesRequest(optional(request)),
                &context,
            )
            .await?;
        expect_result!(r, ListResourceTemplatesResult)
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let r = self
            .forward(
                ClientRequest::ReadResourceRequest(Request::new(request)),
                &context,
            )
            .await?;
        match r {
            ServerResult::ReadResourceResult(r) => Ok(ReadResourceResponse::Complete(r)),
            ServerResult::InputRequiredResult(r) => Ok(ReadResourceResponse::InputRequired(r)),
            other => reinterpret(other).map(ReadResourceResponse::Complete),
        }
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        // list_changed notifications are fanned out; per-resource subscriptions are not bridged.
        let mut accepted = requested.clone();
        accepted.resource_subscriptions = None;
        Some(accepted)
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), McpError> {
        lock(&self.shared.listeners).insert(self.uid, context.sink().clone());
        tokio::select! {
            _ = context.cancelled() => {}
            _ = self.shared.stopping.cancelled() => {}
        }
        lock(&self.shared.listeners).remove(&self.uid);
        Ok(())
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.forward(
            ClientRequest::SubscribeRequest(Request::new(request)),
            &context,
        )
        .await
        .map(|_| ())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.forward(
            ClientRequest::UnsubscribeRequest(Request::new(request)),
            &context,
        )
        .await
        .map(|_| ())
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let r = self
            .forward(
                ClientRequest::CallToolRequest(Request::new(request)),
                &context,
            )
            .await?;
        match r {
            ServerResult::CallToolResult(r) => Ok(CallToolResponse::Complete(r)),
            ServerResult::InputRequiredResult(r) => Ok(CallToolResponse::InputRequired(r)),
            ServerResult::CreateTaskResult(r) => Ok(CallToolResponse::Task(r)),
            other => reinterpret(other).map(CallToolResponse::Complete),
        }
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let first_page = request.as_ref().is_none_or(|p| p.cursor.is_none());
        let r = self
            .forward(ClientRequest::ListToolsRequest(optional(request)), &context)
            .await?;
        let result: ListToolsResult = expect_result!(r, ListToolsResult)?;
        self.shared.remember_tools(&result.tools, first_page);
        Ok(result)
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        lock(&self.shared.tools).get(name).cloned()
    }

    async fn on_custom_request(
        &self,
        request: CustomRequest,
        context: RequestContext<RoleServer>,
    ) -> Result<CustomResult, McpError> {
        let r = self
            .forward(ClientRequest::CustomRequest(request), &context)
            .await?;
        expect_result!(r, CustomResult)
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, McpError> {
        let r = self
            .forward(
                ClientRequest::GetTaskRequest(Request::new(request)),
                &context,
            )
            .await?;
        expect_result!(r, GetTaskResult)
    }

    async fn update_task(
        &self,
        request: UpdateTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.forward(
            ClientRequest::UpdateTaskRequest(Request::new(request)),
            &context,
        )
        .await
        .map(|_| ())
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.forward(
            ClientRequest::CancelTaskRequest(Request::new(request)),
            &context,
        )
        .await
        .map(|_| ())
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        lock(&self.shared.sessions).insert(self.uid, context.peer);
    }

    async fn on_roots_list_changed(&self, _context: NotificationContext<RoleServer>) {
        self.notify_child(ClientNotification::RootsListChangedNotification(
            Default::default(),
        ))
        .await;
    }

    async fn on_custom_notification(
        &self,
        notification: CustomNotification,
        _context: NotificationContext<RoleServer>,
    ) {
        self.notify_child(ClientNotification::CustomNotification(notification))
            .await;
    }
}

fn optional<M: Default>(
    params: Option<PaginatedRequestParams>,
) -> RequestOptionalParam<M, PaginatedRequestParams> {
    RequestOptionalParam {
        method: M::default(),
        params,
        extensions: Default::default(),
    }
}

/// The bridge's client towards the child: routes server→client traffic back to HTTP sessions.
struct BridgeClient {
    shared: Arc<Shared>,
    generation: u64,
}

impl BridgeClient {
    fn session_for_request(&self) -> Option<(Peer<RoleServer>, RequestId)> {
        self.shared.sole_inflight_session(self.generation)
    }
}

fn spawn_fanout<F>(route: &str, what: &'static str, fut: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let route = route.to_owned();
    tokio::spawn(async move {
        if tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .is_err()
        {
            tracing::debug!(%route, "forwarding {what} to HTTP clients timed out");
        }
    });
}

impl Service<RoleClient> for BridgeClient {
    async fn handle_request(
        &self,
        request: ServerRequest,
        _context: RequestContext<RoleClient>,
    ) -> Result<ClientResult, McpError> {
        if let ServerRequest::PingRequest(_) = request {
            return Ok(ClientResult::empty(()));
        }
        let Some((peer, origin)) = self.session_for_request() else {
            return Err(McpError::invalid_request(
                "no HTTP client session can answer this request (it is not tied to a single in-flight request)",
                None,
            ));
        };
        let caps = peer.peer_info().map(|i| i.capabilities.clone());
        let supported = match (&request, caps.as_ref()) {
            (ServerRequest::CreateMessageRequest(_), Some(c)) => c.sampling.is_some(),
            (ServerRequest::ListRootsRequest(_), Some(c)) => c.roots.is_some(),
            (ServerRequest::ElicitRequest(_), Some(c)) => c.elicitation.is_some(),
            (ServerRequest::CustomRequest(_), Some(_)) => true,
            _ => false,
        };
        if !supported {
            return Err(McpError::invalid_request(
                format!(
                    "the HTTP client did not declare support for `{}`",
                    server_request_method(&request)
                ),
                None,
            ));
        }
        let mut request = request;
        rmcp::model::GetExtensions::extensions_mut(&mut request)
            .insert(OriginatingRequestId(origin));
        // Send from a fresh task: rmcp stamps requests sent inside a handler with the handler's
        // own (child-side) request id as the originating request, which would override ours.
        let sent = tokio::spawn(async move {
            let handle = peer
                .send_request_with_option(
                    request,
                    PeerRequestOptions::with_timeout(CLIENT_REQUEST_TIMEOUT),
                )
                .await
                .map_err(map_service_error)?;
            handle.await_response().await.map_err(map_service_error)
        });
        match sent.await {
            Ok(r) => r,
            Err(e) => Err(McpError::internal_error(
                format!("forwarding the request to the HTTP client failed: {e}"),
                None,
            )),
        }
    }

    async fn handle_notification(
        &self,
        notification: ServerNotification,
        _context: NotificationContext<RoleClient>,
    ) -> Result<(), McpError> {
        let route = self.shared.route_id.clone();
        match notification {
            ServerNotification::ProgressNotification(n) => {
                let target = {
                    let progress = lock(&self.shared.progress);
                    let inflight = lock(&self.shared.inflight);
                    progress
                        .get(&(self.generation, n.params.progress_token.clone()))
                        .and_then(|id| inflight.get(&(self.generation, id.clone())))
                        .and_then(|e| {
                            e.client_progress
                                .clone()
                                .map(|t| (e.session_peer.clone(), t))
                        })
                };
                if let Some((peer, token)) = target {
                    let mut params = n.params;
                    params.progress_token = token;
                    spawn_fanout(&route, "progress", async move {
                        let _ = peer.notify_progress(params).await;
                    });
                }
            }
            ServerNotification::LoggingMessageNotification(n) => {
                let peers = match self.session_for_request() {
                    Some((peer, _)) => vec![peer],
                    None => self.shared.broadcast_peers(),
                };
                spawn_fanout(&route, "log message", async move {
                    for p in peers {
                        let _ = p.notify_logging_message(n.params.clone()).await;
                    }
                });
            }
            ServerNotification::ToolListChangedNotification(_)
            | ServerNotification::PromptListChangedNotification(_)
            | ServerNotification::ResourceListChangedNotification(_)
            | ServerNotification::ResourceUpdatedNotification(_) => {
                if matches!(
                    notification,
                    ServerNotification::ToolListChangedNotification(_)
                ) {
                    lock(&self.shared.tools).clear();
                }
                let peers = self.shared.broadcast_peers();
                let sinks = self.shared.listeners();
                spawn_fanout(&route, "change notification", async move {
                    for p in peers {
                        let r = match &notification {
                            ServerNotification::ToolListChangedNotification(_) => {
                                p.notify_tool_list_changed().await
                            }
                            ServerNotification::PromptListChangedNotification(_) => {
                                p.notify_prompt_list_changed().await
                            }
                            ServerNotification::ResourceListChangedNotification(_) => {
                                p.notify_resource_list_changed().await
                            }
                            ServerNotification::ResourceUpdatedNotification(n) => {
                                p.notify_resource_updated(n.params.clone()).await
                            }
                            _ => Ok(()),
                        };
                        if let Err(e) = r {
                            tracing::debug!("broadcast to session failed: {e}");
                        }
                    }
                    for s in sinks {
                        let _ = match &notification {
                            ServerNotification::ToolListChangedNotification(_) => {
                                s.notify_tool_list_changed().await
                            }
                            ServerNotification::PromptListChangedNotification(_) => {
                                s.notify_prompt_list_changed().await
                            }
                            ServerNotification::ResourceListChangedNotification(_) => {
                                s.notify_resource_list_changed().await
                            }
                            _ => Ok(()),
                        };
                    }
                });
            }
            other => {
                tracing::debug!(%route, "dropping server notification {:?}", notification_method(&other));
            }
        }
        Ok(())
    }

    fn get_info(&self) -> ClientConfig {
        let mut caps = ClientCapabilities::default();
        caps.sampling = Some(Default::default());
        caps.elicitation = Some(Default::default());
        // No `roots`: servers ask for roots right after initialize, outside any request, when no
        // HTTP client can answer; without the capability they fall back to their own config.
        ClientConfig::new(caps, bridge_impl())
    }
}

fn server_request_method(r: &ServerRequest) -> &'static str {
    match r {
        ServerRequest::PingRequest(_) => "ping",
        ServerRequest::CreateMessageRequest(_) => "sampling/createMessage",
        ServerRequest::ListRootsRequest(_) => "roots/list",
        ServerRequest::ElicitRequest(_) => "elicitation/create",
        ServerRequest::CustomRequest(_) => "custom request",
        _ => "server request",
    }
}

fn notification_method(n: &ServerNotification) -> String {
    serde_json::to_value(n)
        .ok()
        .and_then(|v| v.get("method").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_default()
}

/// One exposed stdio server.
pub(crate) struct Bridge {
    shared: Arc<Shared>,
    http: StreamableHttpService<ProxyService, LocalSessionManager>,
    http_cancel: CancellationToken,
    supervisor: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Bridge {
    pub(crate) fn start(
        route_id: String,
        spec: StdioSpec,
        opts: &GatewayOptions,
        reporter: StatusReporter,
    ) -> Arc<Self> {
        let session_manager = Arc::new(LocalSessionManager::default());
        let (child_tx, _) = watch::channel(None);
        let (count_tx, _) = watch::channel(0usize);
        let shared = Arc::new(Shared {
            route_id: route_id.clone(),
            child: child_tx,
            generation: AtomicU64::new(0),
            next_uid: AtomicU64::new(1),
            inflight: Default::default(),
            progress: Default::default(),
            inflight_count: count_tx,
            sessions: Default::default(),
            listeners: Default::default(),
            session_gens: Default::default(),
            session_manager: session_manager.clone(),
            last_stderr: Default::default(),
            tools: Default::default(),
            stopping: CancellationToken::new(),
        });
        let http_cancel = CancellationToken::new();
        // Host and Origin are checked by each ingress, which knows its own names (loopback ports,
        // tunnel hostnames); rmcp's loopback-only default would refuse every tunnel request.
        let config = StreamableHttpServerConfig::default()
            .disable_allowed_hosts()
            .with_max_request_body_bytes(opts.max_body_bytes)
            .with_cancellation_token(http_cancel.clone());
        let factory_shared = shared.clone();
        let http = StreamableHttpService::new(
            move || Ok(ProxyService::new(factory_shared.clone())),
            session_manager,
            config,
        );
        let supervisor = tokio::spawn(supervise(
            shared.clone(),
            spec,
            opts.restart_initial,
            opts.restart_max,
            reporter,
        ));
        Arc::new(Self {
            shared,
            http,
            http_cancel,
            supervisor: std::sync::Mutex::new(Some(supervisor)),
        })
    }

    pub(crate) async fn handle(&self, req: http::Request<Body>) -> http::Response<Body> {
        let path = req.uri().path();
        if path != "/mcp" && path != "/mcp/" {
            return json_error(
                http::StatusCode::NOT_FOUND,
                "not found: this MCP server is served at /mcp",
            );
        }
        let is_delete = req.method() == http::Method::DELETE;
        let session = req
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Some(sid) = &session {
            let current = self.shared.generation.load(Ordering::SeqCst);
            let minted = lock(&self.shared.session_gens).get(sid).copied();
            if minted != Some(current) {
                if minted.is_some() {
                    self.shared
                        .close_stale_sessions(current.saturating_sub(1))
                        .await;
                }
                return plain(
                    http::StatusCode::NOT_FOUND,
                    "Not Found: session expired (the MCP server restarted); initialize a new session",
                );
            }
        }
        let resp = self.http.handle(req).await;
        let status = resp.status();
        if let Some(sid) = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
        {
            let current = self.shared.generation.load(Ordering::SeqCst);
            let full = {
                let mut gens = lock(&self.shared.session_gens);
                gens.insert(sid.to_owned(), current);
                gens.len() >= SESSION_PRUNE_AT
            };
            if full {
                // Forget sessions rmcp already dropped (idle timeout) without a DELETE.
                let live: std::collections::HashSet<String> = self
                    .shared
                    .session_manager
                    .sessions
                    .read()
                    .await
                    .keys()
                    .map(|k| k.to_string())
                    .collect();
                lock(&self.shared.session_gens).retain(|id, _| live.contains(id));
            }
        }
        if is_delete
            && status.is_success()
            && let Some(sid) = session
        {
            lock(&self.shared.session_gens).remove(&sid);
        }
        resp.map(Body::new)
    }

    /// Waits (up to `drain`) for in-flight requests, then stops the child.
    pub(crate) async fn stop(&self, drain: Duration) {
        if !drain.is_zero() {
            let mut rx = self.shared.inflight_count.subscribe();
            let busy = *rx.borrow_and_update() > 0;
            let started = Instant::now();
            let _ = tokio::time::timeout(drain, rx.wait_for(|n| *n == 0)).await;
            if busy {
                // The last answers still have to be written to their HTTP streams.
                let grace = drain.saturating_sub(started.elapsed()).min(FLUSH_GRACE);
                tokio::time::sleep(grace).await;
            }
        }
        self.shared.stopping.cancel();
        self.http_cancel.cancel();
        let handle = lock(&self.supervisor).take();
        if let Some(mut handle) = handle {
            // Graceful child shutdown takes at most ~6 s (stdin close, SIGTERM, SIGKILL).
            if tokio::time::timeout(Duration::from_secs(15), &mut handle)
                .await
                .is_err()
            {
                handle.abort();
            }
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.shared.stopping.cancel();
        self.http_cancel.cancel();
    }
}

fn plain(status: http::StatusCode, msg: &'static str) -> http::Response<Body> {
    let mut r = http::Response::new(Body::from(msg));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn jittered(delay: Duration) -> Duration {
    let ms = delay.as_millis().max(1) as u64;
    let low = ms / 2;
    Duration::from_millis(rand::rng().random_range(low..=ms))
}

async fn supervise(
    shared: Arc<Shared>,
    spec: StdioSpec,
    initial: Duration,
    max: Duration,
    reporter: StatusReporter,
) {
    let mut delay = initial;
    let mut attempt: u32 = 0;
    let mut force_initialize = false;
    loop {
        if shared.stopping.is_cancelled() {
            break;
        }
        reporter.set(Health::Starting);
        let (error, healthy_for, wants_initialize) =
            run_child_once(&shared, &spec, &reporter, force_initialize).await;
        if shared.stopping.is_cancelled() {
            break;
        }
        if wants_initialize && !force_initialize {
            // The child answered `server/discover` but supports only handshake-era versions:
            // start it again with the plain `initialize` lifecycle, without backoff.
            tracing::info!(route = %shared.route_id, "{error}; retrying with initialize");
            force_initialize = true;
            continue;
        }
        if healthy_for >= HEALTHY_RESET {
            delay = initial;
            attempt = 0;
        }
        attempt = attempt.saturating_add(1);
        let retry = jittered(delay);
        tracing::warn!(
            route = %shared.route_id,
            attempt,
            retry_in_ms = retry.as_millis() as u64,
            "MCP server stopped: {error}"
        );
        reporter.set(Health::Restarting {
            attempt,
            retry_in_ms: retry.as_millis() as u64,
            last_error: error,
        });
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = shared.stopping.cancelled() => break,
        }
        delay = (delay * 2).min(max);
    }
    reporter.set(Health::Stopped);
}

/// Runs one child until it exits or the bridge stops. Returns why it ended and how long it was
/// ready.
async fn run_child_once(
    shared: &Arc<Shared>,
    spec: &StdioSpec,
    reporter: &StatusReporter,
    force_initialize: bool,
) -> (String, Duration, bool) {
    let mut cmd = tokio::process::Command::new(&spec.command);
    cmd.args(&spec.args).envs(&spec.env).kill_on_drop(true);
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    #[cfg(unix)]
    cmd.process_group(0);
    let spawned = TokioChildProcess::builder(cmd)
        .stderr(Stdio::piped())
        .spawn();
    let (transport, stderr) = match spawned {
        Ok(x) => x,
        Err(e) => {
            return (
                format!(
                    "failed to start `{}`: {e} (check the command exists and is executable)",
                    spec.command
                ),
                Duration::ZERO,
                false,
            );
        }
    };
    let pid = transport.id();
    // The child leads its own process group; whatever is left of the group (e.g. `npx` → `sh` →
    // `node`) is killed when this run ends.
    let _group = ProcessGroupGuard(pid);
    *lock(&shared.last_stderr) = None;
    let stderr_task = stderr.map(|stderr| tokio::spawn(log_stderr(shared.clone(), stderr)));
    let generation = shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
    let client = BridgeClient {
        shared: shared.clone(),
        generation,
    };
    let lifecycle = if force_initialize {
        ClientLifecycleMode::Initialize
    } else {
        ClientLifecycleMode::Auto {
            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            legacy_version: Some(ProtocolVersion::V_2025_11_25),
        }
    };
    let started = tokio::select! {
        r = tokio::time::timeout(STARTUP_TIMEOUT, client.serve_with_lifecycle(transport, lifecycle)) => r,
        _ = shared.stopping.cancelled() => return ("stopped".into(), Duration::ZERO, false),
    };
    let running = match started {
        Ok(Ok(running)) => running,
        Ok(Err(e)) => {
            let wants_initialize = matches!(
                &e,
                ClientInitializeError::NoCompatibleProtocolVersion { server_supported, .. }
                    if server_supported.iter().any(ProtocolVersion::has_initialize)
            );
            return (
                with_stderr(shared, format!("MCP handshake failed: {e}")),
                Duration::ZERO,
                wants_initialize,
            );
        }
        Err(_) => {
            return (
                with_stderr(
                    shared,
                    format!("no MCP handshake within {}s", STARTUP_TIMEOUT.as_secs()),
                ),
                Duration::ZERO,
                false,
            );
        }
    };
    let Some(info) = running.peer().peer_info() else {
        return (
            "MCP handshake returned no server info".into(),
            Duration::ZERO,
            false,
        );
    };
    let era = info.protocol_version.clone();
    let legacy = era.has_initialize();
    tracing::info!(route = %shared.route_id, pid, era = %era, "MCP server ready");
    shared.child.send_replace(Some(Arc::new(ChildHandle {
        generation,
        peer: running.peer().clone(),
        info,
        legacy,
    })));
    reporter.set(Health::Ready {
        era: era.to_string(),
        pid,
    });
    lock(&shared.tools).clear();
    if running
        .peer()
        .peer_info()
        .is_some_and(|i| i.capabilities.tools.is_some())
    {
        // Seed the tool cache so header validation works before any client lists tools.
        let peer = running.peer().clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let first = tokio::time::timeout(
                Duration::from_secs(30),
                peer.send_request(ClientRequest::ListToolsRequest(optional(None))),
            )
            .await;
            if let Ok(Ok(ServerResult::ListToolsResult(r))) = first {
                shared.remember_tools(&r.tools, true);
            }
        });
    }
    let ready_at = Instant::now();
    let cancel = running.cancellation_token();
    let waiting = running.waiting();
    tokio::pin!(waiting);
    let stopped = tokio::select! {
        _ = &mut waiting => false,
        _ = shared.stopping.cancelled() => {
            cancel.cancel();
            // The service loop closes the transport: stdin close → SIGTERM → SIGKILL.
            let _ = tokio::time::timeout(Duration::from_secs(12), &mut waiting).await;
            true
        }
    };
    let healthy_for = ready_at.elapsed();
    shared.child.send_if_modified(|c| {
        if c.as_ref().is_some_and(|c| c.generation == generation) {
            *c = None;
            true
        } else {
            false
        }
    });
    if stopped {
        return ("stopped".into(), healthy_for, false);
    }
    // Let the stderr reader catch the child's last words (the pipe closes with the process).
    if let Some(task) = stderr_task {
        let _ = tokio::time::timeout(Duration::from_millis(500), task).await;
    }
    // Sessions minted before the restart get 404 from now on (see `Bridge::handle`). End their
    // streams once the failed in-flight requests have had their error responses written.
    {
        let shared = shared.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline
                && lock(&shared.inflight).keys().any(|(g, _)| *g == generation)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            shared.close_stale_sessions(generation).await;
        });
    }
    (
        with_stderr(shared, "the MCP server process exited".into()),
        healthy_for,
        false,
    )
}

struct ProcessGroupGuard(Option<u32>);

impl Drop for ProcessGroupGuard {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(pgid) = self.0.and_then(|p| i32::try_from(p).ok())
            && pgid > 1
        {
            // ESRCH (group already gone) is the normal case.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn with_stderr(shared: &Shared, msg: String) -> String {
    match lock(&shared.last_stderr).as_deref() {
        Some(line) => format!("{msg} (last stderr line: {line})"),
        None => msg,
    }
}

/// Logs the child's stderr line by line (bounded line length); never treated as an error.
async fn log_stderr(shared: Arc<Shared>, mut stderr: tokio::process::ChildStderr) {
    let mut buf = [0u8; 4096];
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut truncated = false;
    let emit = |line: &mut Vec<u8>, truncated: &mut bool| {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
        let suffix = if *truncated { " …[truncated]" } else { "" };
        tracing::info!(target: "airlock_gateway::child", route = %shared.route_id, "stderr: {text}{suffix}");
        let mut last = text.to_owned();
        last.truncate(200);
        if !last.trim().is_empty() {
            *lock(&shared.last_stderr) = Some(last);
        }
        line.clear();
        *truncated = false;
    };
    loop {
        let n = match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                emit(&mut line, &mut truncated);
            } else if line.len() < STDERR_LINE_MAX {
                line.push(b);
            } else {
                truncated = true;
            }
        }
    }
    if !line.is_empty() {
        emit(&mut line, &mut truncated);
    }
}
