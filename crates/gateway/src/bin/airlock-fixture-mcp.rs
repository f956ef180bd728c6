//! A small stdio MCP server used by the gateway's tests (and handy for manual checks).
//!
//! Tools: `echo {text}` (returns `text`), `add {a, b}`, `slow {ms, steps?}` (sleeps, reporting
//! progress), `crash` (exits the process immediately), `pid` (returns the process id),
//! `notify_tools_changed` (sends `notifications/tools/list_changed`), `sample` (asks the client
//! for `sampling/createMessage`).
//!
//! Flags: `--legacy` answers only the `initialize` lifecycle (no `server/discover`, versions up to
//! 2025-11-25); `--modern` speaks only 2026-07-28; default is dual-era. `--stderr-noise` writes a
//! long line to stderr at startup (the bridge must log, not fail).

#![allow(deprecated)] // sampling is deprecated by SEP-2577 but legacy clients use it

use std::{borrow::Cow, sync::Arc, time::Duration};

use rmcp::{
    ErrorData as McpError, RoleServer, ServerHandler, ServiceExt,
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ClientNotification, ClientRequest,
        ContentBlock as Content, CreateMessageRequestParams, DiscoverResult, Implementation,
        JsonObject, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam,
        ProtocolVersion, SamplingMessage, ServerCapabilities, ServerConfig, ServerResult, Tool,
    },
    service::{NotificationContext, RequestContext, Service},
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Era {
    Legacy,
    Modern,
    Dual,
}

#[derive(Clone)]
struct Fixture {
    era: Era,
}

fn schema(value: serde_json::Value) -> Arc<JsonObject> {
    match value {
        serde_json::Value::Object(map) => Arc::new(map),
        _ => Arc::new(JsonObject::new()),
    }
}

fn tools() -> Vec<Tool> {
    vec![
        Tool::new(
            "echo",
            "Returns its `text` argument",
            schema(
                serde_json::json!({"type":"object","properties":{"text":{"type":"string"}},"required":["text"]}),
            ),
        ),
        Tool::new(
            "add",
            "Adds two numbers",
            schema(
                serde_json::json!({"type":"object","properties":{"a":{"type":"number"},"b":{"type":"number"}},"required":["a","b"]}),
            ),
        ),
        Tool::new(
            "slow",
            "Sleeps `ms` milliseconds, reporting progress in `steps` steps",
            schema(
                serde_json::json!({"type":"object","properties":{"ms":{"type":"integer"},"steps":{"type":"integer"}},"required":["ms"]}),
            ),
        ),
        Tool::new(
            "crash",
            "Exits the server process",
            schema(serde_json::json!({"type":"object","properties":{}})),
        ),
        Tool::new(
            "region",
            "Returns its `region` argument (mirrored in the Mcp-Param-Region header)",
            schema(
                serde_json::json!({"type":"object","properties":{"region":{"type":"string","x-mcp-header":"Region"}},"required":["region"]}),
            ),
        ),
        Tool::new(
            "sample",
            "Asks the client for a sampling/createMessage and returns the answer",
            schema(serde_json::json!({"type":"object","properties":{}})),
        ),
        Tool::new(
            "pid",
            "Returns the server's process id",
            schema(serde_json::json!({"type":"object","properties":{}})),
        ),
        Tool::new(
            "notify_tools_changed",
            "Sends notifications/tools/list_changed",
            schema(serde_json::json!({"type":"object","properties":{}})),
        ),
    ]
}

fn arg_f64(args: &Option<JsonObject>, key: &str) -> Result<f64, McpError> {
    args.as_ref()
        .and_then(|a| a.get(key))
        .and_then(serde_json::Value::as_f64)
        .ok_or_else(|| McpError::invalid_params(format!("missing number argument `{key}`"), None))
}

impl ServerHandler for Fixture {
    fn get_info(&self) -> ServerConfig {
        let mut info = ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        );
        info.server_info = Implementation::new("airlock-fixture-mcp", env!("CARGO_PKG_VERSION"));
        info.instructions = Some("Airlock test fixture".into());
        info
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        match self.era {
            Era::Legacy => Cow::Owned(vec![
                ProtocolVersion::V_2025_11_25,
                ProtocolVersion::V_2025_06_18,
                ProtocolVersion::V_2025_03_26,
                ProtocolVersion::V_2024_11_05,
            ]),
            Era::Modern => Cow::Owned(vec![ProtocolVersion::V_2026_07_28]),
            Era::Dual => Cow::Borrowed(ProtocolVersion::KNOWN_VERSIONS),
        }
    }

    async fn discover(
        &self,
        _context: RequestContext<RoleServer>,
    ) -> Result<DiscoverResult, McpError> {
        if self.era == Era::Legacy {
            return Err(McpError::method_not_found::<
                rmcp::model::DiscoverRequestMethod,
            >());
        }
        Ok(DiscoverResult::from_server_info(
            ServerHandler::supported_protocol_versions(self).into_owned(),
            ServerHandler::get_info(self),
        ))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let args = &request.arguments;
        let result = match request.name.as_ref() {
            "echo" => {
                let text = args
                    .as_ref()
                    .and_then(|a| a.get("text"))
                    .and_then(serde_json::Value::as_str)
                    .ok_or_else(|| McpError::invalid_params("missing `text`", None))?;
                CallToolResult::success(vec![Content::text(text)])
            }
            "add" => {
                let sum = arg_f64(args, "a")? + arg_f64(args, "b")?;
                CallToolResult::success(vec![Content::text(sum.to_string())])
            }
            "slow" => {
                let ms = arg_f64(args, "ms")?.max(0.0) as u64;
                let steps = args
                    .as_ref()
                    .and_then(|a| a.get("steps"))
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(4)
                    .clamp(1, 100);
                let token = context.meta.get_progress_token();
                for step in 1..=steps {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(ms / steps)) => {}
                        _ = context.ct.cancelled() => {
                            return Err(McpError::internal_error("cancelled", None));
                        }
                    }
                    if let Some(token) = token.clone() {
                        let mut p = ProgressNotificationParam::new(token, step as f64);
                        p.total = Some(steps as f64);
                        let _ = context.peer.notify_progress(p).await;
                    }
                }
                CallToolResult::success(vec![Content::text(format!("slept {ms}"))])
            }
            "crash" => {
                eprintln!("airlock-fixture-mcp: crash requested, exiting");
                std::process::exit(3);
            }
            "region" => {
                let region = args
                    .as_ref()
                    .and_then(|a| a.get("region"))
                    .and_then(serde_json::Value::as_str)
                    .ok_or_else(|| McpError::invalid_params("missing `region`", None))?;
                CallToolResult::success(vec![Content::text(region)])
            }
            "sample" => {
                let params =
                    CreateMessageRequestParams::new(vec![SamplingMessage::user_text("ping")], 16);
                match context.peer.create_message(params).await {
                    Ok(result) => CallToolResult::success(vec![Content::text(format!(
                        "sampled: {}",
                        serde_json::to_string(&result).unwrap_or_default()
                    ))]),
                    Err(e) => {
                        CallToolResult::error(vec![Content::text(format!("sampling failed: {e}"))])
                    }
                }
            }
            "pid" => CallToolResult::success(vec![Content::text(std::process::id().to_string())]),
            "notify_tools_changed" => {
                let _ = context.peer.notify_tool_list_changed().await;
                CallToolResult::success(vec![Content::text("sent")])
            }
            other => {
                return Err(McpError::invalid_params(
                    format!("unknown tool `{other}`"),
                    None,
                ));
            }
        };
        Ok(CallToolResponse::Complete(result))
    }
}

/// Behaves like a pre-2026 server: `server/discover` is an unknown method (as in servers built
/// on older SDKs), so clients fall back to `initialize`.
struct LegacyOnly(Fixture);

impl Service<RoleServer> for LegacyOnly {
    async fn handle_request(
        &self,
        request: ClientRequest,
        context: RequestContext<RoleServer>,
    ) -> Result<ServerResult, McpError> {
        if matches!(request, ClientRequest::DiscoverRequest(_)) {
            return Err(McpError::method_not_found::<
                rmcp::model::DiscoverRequestMethod,
            >());
        }
        Service::handle_request(&self.0, request, context).await
    }

    async fn handle_notification(
        &self,
        notification: ClientNotification,
        context: NotificationContext<RoleServer>,
    ) -> Result<(), McpError> {
        Service::handle_notification(&self.0, notification, context).await
    }

    fn get_info(&self) -> ServerConfig {
        ServerHandler::get_info(&self.0)
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        ServerHandler::supported_protocol_versions(&self.0)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut era = Era::Dual;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--legacy" => era = Era::Legacy,
            "--modern" => era = Era::Modern,
            "--stderr-noise" => eprintln!("noise: {}", "x".repeat(10_000)),
            other => {
                eprintln!("unknown flag {other}; expected --legacy, --modern or --stderr-noise");
                std::process::exit(2);
            }
        }
    }
    if era == Era::Legacy {
        let service = LegacyOnly(Fixture { era })
            .serve(rmcp::transport::stdio())
            .await?;
        service.waiting().await?;
    } else {
        let service = Fixture { era }.serve(rmcp::transport::stdio()).await?;
        service.waiting().await?;
    }
    Ok(())
}
