//! The admin API: a small JSON API over HTTP/1.1 with bearer tokens.
//!
//! | request | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus metrics (no token) |
//! | `GET /v1/tenants` | the tenants the token sees, with limits, grants and quotas |
//! | `GET /v1/pipelines` | `{"pipelines": [VIEW, ...]}` the token sees |
//! | `GET /v1/pipelines/T/P` | one pipeline's VIEW |
//! | `POST /v1/pipelines/T/P/ACTION` | `stop`, `start`, `pause`, `resume`, `reload`, `reset`: 202 and the VIEW |
//!
//! The operator token sees every tenant; a tenant token only its own: any
//! other tenant's pipeline is 404 to it. No valid token: 401.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::registry::Registry;
use wasmtime_wasi_http::io::TokioIo;

use super::{Action, Hosted};

/// What the admin API serves.
pub struct Admin {
    pub pipelines: Arc<Mutex<Vec<Arc<Hosted>>>>,
    pub operator: Option<String>,
    /// Token → tenant (changes when a tenant file does).
    pub tokens: Arc<Mutex<BTreeMap<String, String>>>,
    pub registry: Registry,
}

/// Who a request speaks for.
#[derive(PartialEq)]
enum Principal {
    Operator,
    Tenant(String),
}

pub async fn accept(listener: tokio::net::TcpListener, admin: Arc<Admin>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, std::convert::Infallible>(admin.handle(&req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn reply(code: StatusCode, body: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let text = serde_json::to_string(body).unwrap_or_else(|e| format!("{{\"error\":\"cannot encode: {e}\"}}"));
    let mut response = Response::new(Full::new(Bytes::from(text + "\n")));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    if code == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(hyper::header::WWW_AUTHENTICATE, hyper::header::HeaderValue::from_static("Bearer"));
    }
    response
}

fn error(code: StatusCode, what: &str) -> Response<Full<Bytes>> {
    reply(code, &serde_json::json!({ "error": what }))
}

impl Admin {
    fn principal<B>(&self, req: &Request<B>) -> Option<Principal> {
        let header = req.headers().get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
        let token = header.strip_prefix("Bearer ")?.trim();
        if self.operator.as_deref().is_some_and(|op| constant_time_eq(op, token)) {
            return Some(Principal::Operator);
        }
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.iter().find(|(t, _)| constant_time_eq(t, token)).map(|(_, tenant)| Principal::Tenant(tenant.clone()))
    }

    fn visible(&self, who: &Principal) -> Vec<Arc<Hosted>> {
        let all = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        all.iter()
            .filter(|p| match who {
                Principal::Operator => true,
                Principal::Tenant(t) => &p.tenant == t,
            })
            .cloned()
            .collect()
    }

    fn handle<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        let path: Vec<&str> = req.uri().path().trim_matches('/').split('/').collect();
        if path == ["metrics"] && req.method() == Method::GET {
            let mut text = String::new();
            if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
                return error(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the metrics");
            }
            let mut response = Response::new(Full::new(Bytes::from(text)));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            return response;
        }
        let Some(who) = self.principal(req) else {
            return error(StatusCode::UNAUTHORIZED, "give a valid bearer token");
        };
        match (req.method(), path.as_slice()) {
            (&Method::GET, ["v1", "pipelines"]) => {
                let list: Vec<super::View> = self.visible(&who).iter().map(|p| p.view()).collect();
                reply(StatusCode::OK, &serde_json::json!({ "pipelines": list }))
            }
            (&Method::GET, ["v1", "tenants"]) => {
                let mut tenants = BTreeMap::new();
                for hosted in self.visible(&who) {
                    let t = hosted.policy();
                    let entry = tenants.entry(t.name.clone()).or_insert_with(|| {
                        serde_json::json!({
                            "tenant": t.name,
                            "file": t.file,
                            "limits": t.limits,
                            "grants": t.grants,
                            "quotas": t.quotas,
                            "pipelines": [],
                        })
                    });
                    if let Some(list) = entry["pipelines"].as_array_mut() {
                        list.push(serde_json::json!(hosted.name));
                    }
                }
                reply(StatusCode::OK, &serde_json::json!({ "tenants": tenants.into_values().collect::<Vec<_>>() }))
            }
            (method, ["v1", "pipelines", tenant, name, rest @ ..]) => {
                let visible = self.visible(&who);
                let Some(hosted) = visible.iter().find(|p| p.tenant == *tenant && p.name == *name) else {
                    return error(StatusCode::NOT_FOUND, "no such pipeline");
                };
                let action = match (method, rest) {
                    (&Method::GET, []) => return reply(StatusCode::OK, &hosted.view()),
                    (&Method::POST, ["stop"]) => Action::Stop,
                    (&Method::POST, ["start"]) => Action::Start,
                    (&Method::POST, ["pause"]) => Action::Pause,
                    (&Method::POST, ["resume"]) => Action::Resume,
                    (&Method::POST, ["reload"]) => Action::Reload,
                    (&Method::POST, ["reset"]) => Action::Reset,
                    (_, [_]) => {
                        return error(
                            StatusCode::NOT_FOUND,
                            "no such action; POST one of stop, start, pause, resume, reload, reset",
                        );
                    }
                    _ => return error(StatusCode::NOT_FOUND, "no such resource"),
                };
                if !hosted.act(action) {
                    return error(StatusCode::SERVICE_UNAVAILABLE, "the pipeline's supervisor has ended");
                }
                reply(StatusCode::ACCEPTED, &hosted.view())
            }
            _ => error(StatusCode::NOT_FOUND, "no such resource"),
        }
    }
}

/// Compares tokens without stopping at the first difference.
fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
