//! Calls to the gateway's other Durable Objects (analytics days, alerts):
//! a JSON command in, a JSON reply out, like [`super::key_client`].

use serde::Serialize;
use serde::de::DeserializeOwned;
use worker::{Env, Method, Request, RequestInit};

use crate::error::GatewayError;

/// The analytics day objects' binding (one object per UTC day).
pub(super) const ANALYTICS: &str = "ANALYTICS";
/// The alerts object's binding (one object, [`ALERTS_OBJECT`]).
pub(super) const ALERTS: &str = "ALERTS";
/// The name of the one alerts object.
pub(super) const ALERTS_OBJECT: &str = "alerts";

/// The day object of a `YYYY-MM-DD` date.
pub(super) fn day_object(date: &str) -> String {
    format!("day:{date}")
}

/// Whether a Durable Object binding exists (plain `workerd` configs may
/// bind only the key objects).
pub(super) fn bound(env: &Env, binding: &str) -> bool {
    env.durable_object(binding).is_ok()
}

/// Sends a command to the named object of a binding; its reply.
pub(super) async fn call<C: Serialize, R: DeserializeOwned>(
    env: &Env,
    binding: &str,
    name: &str,
    command: &C,
) -> Result<R, GatewayError> {
    let internal = |what: &str, e: String| GatewayError::Internal {
        message: format!("{binding} {what}: {e}"),
    };
    let body = serde_json::to_string(command).map_err(|e| internal("command", e.to_string()))?;
    let text = call_text(env, binding, name, body).await?;
    serde_json::from_str(&text).map_err(|e| internal("reply", e.to_string()))
}

/// The I/O of [`call`], not generic: one copy in the wasm whatever the
/// command and reply types.
async fn call_text(
    env: &Env,
    binding: &str,
    name: &str,
    body: String,
) -> Result<String, GatewayError> {
    let internal = |what: &str, e: String| GatewayError::Internal {
        message: format!("{binding} {what}: {e}"),
    };
    let stub = env
        .durable_object(binding)
        .and_then(|ns| ns.get_by_name(name))
        .map_err(|e| internal("binding", e.to_string()))?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_body(Some(body.into()));
    let request = Request::new_with_init("https://gateway-object/", &init)
        .map_err(|e| internal("request", e.to_string()))?;
    let mut resp = stub
        .fetch_with_request(request)
        .await
        .map_err(|e| internal("call", e.to_string()))?;
    let text = resp.text().await.unwrap_or_default();
    if resp.status_code() != 200 {
        return Err(internal(
            "answer",
            format!("{}: {text}", resp.status_code()),
        ));
    }
    Ok(text)
}
