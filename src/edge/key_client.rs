//! Calls to the per-key Durable Objects.

use worker::{Env, Method, Request, RequestInit};

use crate::error::GatewayError;
use crate::limits::{Command, Reply};

/// The per-key Durable Object namespace binding.
const KEY_OBJECTS: &str = "KEY_OBJECTS";

/// Sends a command to the named object and returns its reply.
pub(super) async fn call(
    env: &Env,
    object: &str,
    command: &Command,
) -> Result<Reply, GatewayError> {
    let internal = |what: &str, e: String| GatewayError::Internal {
        message: format!("key state {what}: {e}"),
    };
    let stub = env
        .durable_object(KEY_OBJECTS)
        .and_then(|ns| ns.get_by_name(object))
        .map_err(|e| internal("binding", e.to_string()))?;
    let body = serde_json::to_string(command).map_err(|e| internal("command", e.to_string()))?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_body(Some(body.into()));
    let request = Request::new_with_init("https://key-object/", &init)
        .map_err(|e| internal("request", e.to_string()))?;
    let mut resp = stub
        .fetch_with_request(request)
        .await
        .map_err(|e| internal("call", e.to_string()))?;
    if resp.status_code() != 200 {
        let text = resp.text().await.unwrap_or_default();
        return Err(internal(
            "answer",
            format!("{}: {text}", resp.status_code()),
        ));
    }
    resp.json::<Reply>()
        .await
        .map_err(|e| internal("reply", e.to_string()))
}

/// A reply the caller did not expect, as an error.
pub(super) fn unexpected(reply: Reply) -> GatewayError {
    match reply {
        Reply::Rejected {
            status: 404,
            message,
        } => GatewayError::NotFound { path: message },
        Reply::Rejected { message, .. } => GatewayError::InvalidRequest {
            message,
            param: None,
        },
        other => GatewayError::Internal {
            message: format!("unexpected key state reply: {other:?}"),
        },
    }
}
