//! Calls to the per-key Durable Objects.

use worker::Env;

use crate::error::GatewayError;
use crate::limits::{Command, Reply};

/// The per-key Durable Object namespace binding.
const KEY_OBJECTS: &str = "KEY_OBJECTS";

/// Sends a command to the named object and returns its reply (through
/// the one non-generic transport of [`super::objects`]).
pub(super) async fn call(
    env: &Env,
    object: &str,
    command: &Command,
) -> Result<Reply, GatewayError> {
    super::objects::call(env, KEY_OBJECTS, object, command).await
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
