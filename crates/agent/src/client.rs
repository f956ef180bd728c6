//! A client for the control API of a running agent, found through `run/agent.json`.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::home::{AirlockHome, RuntimeInfo, pid_alive};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("airlock is not running for {home} (start it with `airlock up`)")]
    NotRunning { home: String },
    #[error("cannot reach the agent at {url}: {source} (is `airlock up` still running?)")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The agent answered with an error status; `body` holds its JSON (`error`, maybe `candidates`).
    #[error("{message}")]
    Api {
        status: u16,
        message: String,
        body: Value,
    },
}

#[derive(Debug, Clone)]
pub struct ControlClient {
    http: reqwest::Client,
    info: RuntimeInfo,
}

impl ControlClient {
    pub fn connect(home: &AirlockHome) -> Result<Self, ClientError> {
        let not_running = || ClientError::NotRunning {
            home: home.root().display().to_string(),
        };
        let info = home.read_runtime().ok_or_else(not_running)?;
        if !pid_alive(info.pid) {
            return Err(not_running());
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|source| ClientError::Unreachable {
                url: info.api_url.clone(),
                source,
            })?;
        Ok(Self { http, info })
    }

    pub fn api_url(&self) -> &str {
        &self.info.api_url
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        let req = self.http.get(format!("{}{path}", self.info.api_url));
        self.send(req).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        let req = self
            .http
            .post(format!("{}{path}", self.info.api_url))
            .json(body);
        self.send(req).await
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        let unreachable = |source| ClientError::Unreachable {
            url: self.info.api_url.clone(),
            source,
        };
        let resp = req
            .bearer_auth(&self.info.token)
            .send()
            .await
            .map_err(unreachable)?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status == StatusCode::OK {
            return Ok(body);
        }
        let message = body
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("the agent answered {status}"));
        Err(ClientError::Api {
            status: status.as_u16(),
            message,
            body,
        })
    }
}
