//! The admin API (`/admin/*`), guarded by the `ADMIN_TOKEN` secret.
//!
//! Keys live in their own Durable Objects (the source of truth, consulted on
//! every request, so a revocation takes effect at once everywhere); a
//! registry object lists them. A new or rotated secret is returned once and
//! only its SHA-256 is stored.

use serde::Serialize;
use worker::{Env, Request, console_error};

use super::{config_cache, key_client, read_body, var};
use crate::config::Config;
use crate::error::GatewayError;
use crate::gateway::{AdminRoute, Reply};
use crate::keys;
use crate::limits::{
    Auth, Command, KeyPatch, KeyRecord, KeySettings, KeyView, Reply as KeyReply, check_name,
    check_trust,
};

/// Secret that guards `/admin/*`.
const ADMIN_TOKEN: &str = "ADMIN_TOKEN";

/// Serves one admin request.
pub(super) async fn handle(
    req: &mut Request,
    env: &Env,
    route: AdminRoute,
    method: &str,
) -> Result<Reply, GatewayError> {
    authorize(req, env)?;
    match (route, method) {
        (AdminRoute::Config, "PUT") => put_config(req, env).await,
        (AdminRoute::Config, _) => Ok(Reply::json_value(200, &config_cache::status(env).await)),
        (AdminRoute::Keys, "POST") => create_key(req, env).await,
        (AdminRoute::Keys, _) => list_keys(env).await,
        (AdminRoute::Key(id), "PATCH") => {
            let patch: KeyPatch = parse_json(&read_body(req.inner()).await?)?;
            if let Some(name) = &patch.name {
                check_name(name)?;
            }
            check_trust(
                patch.data_class.clone().flatten().as_deref(),
                patch.pii.as_ref().and_then(Option::as_ref),
            )?;
            change_key(env, &id, Command::Update { patch }).await
        }
        (AdminRoute::Key(id), "DELETE") | (AdminRoute::RevokeKey(id), _) => {
            change_key(env, &id, Command::Revoke).await
        }
        (AdminRoute::Key(id), _) => {
            let view = expect_key(
                &id,
                key_client::call(env, &object(&id)?, &Command::Get).await?,
            )?;
            Ok(Reply::json_value(200, &view))
        }
        (AdminRoute::RotateKey(id), _) => rotate_key(env, &id).await,
        (AdminRoute::ValidateConfig, _) => {
            super::observe_admin::validate_config(&read_body(req.inner()).await?)
        }
        (AdminRoute::Analytics, _) => super::observe_admin::analytics(req, env).await,
        (AdminRoute::Logs, _) => super::observe_admin::logs(req, env).await,
        (AdminRoute::Health, _) => super::observe_admin::health(req, env).await,
        (AdminRoute::Alerts, _) => super::observe_admin::alerts(env).await,
        (AdminRoute::Usage, _) => {
            let id = crate::http::url::query_param(&req.inner().url(), "key").ok_or_else(|| {
                GatewayError::InvalidRequest {
                    message: "Give the key's id: /admin/usage?key=<id>.".into(),
                    param: Some("key".into()),
                }
            })?;
            let command = Command::Usage { auth: Auth::Admin };
            let object = object(&id)?;
            super::accounting::before_report(env, &object).await;
            match key_client::call(env, &object, &command).await? {
                KeyReply::Usage(report) if report.key.is_some() => {
                    Ok(Reply::json_value(200, &report))
                }
                _ => Err(no_such_key(&id)),
            }
        }
    }
}

fn authorize(req: &Request, env: &Env) -> Result<(), GatewayError> {
    let header = req.headers().get("authorization").ok().flatten();
    let presented = keys::presented_key(header.as_deref(), None).unwrap_or_default();
    let expected = var(env, ADMIN_TOKEN).unwrap_or_default();
    if expected.is_empty() || !keys::constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
        return Err(GatewayError::Unauthorized {
            message: "The admin API needs `Authorization: Bearer <ADMIN_TOKEN>`.".into(),
        });
    }
    Ok(())
}

/// Validates a config document and stores it in KV; a rejected one is
/// never stored.
async fn put_config(req: &mut Request, env: &Env) -> Result<Reply, GatewayError> {
    let body = read_body(req.inner()).await?;
    let text = String::from_utf8(body).map_err(|e| GatewayError::InvalidJson {
        message: e.to_string(),
    })?;
    if let Err(errors) = Config::from_json(&text) {
        let message = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        return Err(GatewayError::InvalidRequest {
            message: format!("The config was rejected: {message}"),
            param: errors.first().map(|e| e.path.clone()),
        });
    }
    config_cache::store(env, &text).await?;
    Ok(Reply::json_value(200, &config_cache::status(env).await))
}

/// A new key, and its secret (shown this once).
#[derive(Serialize)]
struct Issued {
    key: KeyView,
    secret: String,
}

async fn create_key(req: &mut Request, env: &Env) -> Result<Reply, GatewayError> {
    let settings: KeySettings = parse_json(&read_body(req.inner()).await?)?;
    check_name(&settings.name)?;
    check_trust(settings.data_class.as_deref(), settings.pii.as_ref())?;
    let (id, secret) = keys::new_virtual_key(&random()?);
    let now = super::now_ms();
    let record = KeyRecord {
        id: id.clone(),
        settings,
        secret_hash: keys::hash_key(&secret),
        secret_hint: keys::hint(&secret),
        revoked: false,
        created_ms: now,
        updated_ms: now,
    };
    let view = expect_key(
        &id,
        key_client::call(
            env,
            &keys::virtual_object_name(&id),
            &Command::Create { record },
        )
        .await?,
    )?;
    register(env, &view).await;
    Ok(Reply::json_value(201, &Issued { key: view, secret }))
}

async fn rotate_key(env: &Env, id: &str) -> Result<Reply, GatewayError> {
    let fresh: [u8; 32] = random()?;
    let mut bytes = [0u8; 24];
    bytes.copy_from_slice(&fresh[..24]);
    let secret = keys::rotated_key(id, &bytes);
    let command = Command::Rotate {
        secret_hash: keys::hash_key(&secret),
        secret_hint: keys::hint(&secret),
    };
    let object = object(id)?;
    let view = expect_key(id, key_client::call(env, &object, &command).await?)?;
    super::accounting::after_change(env, &object).await;
    register(env, &view).await;
    Ok(Reply::json_value(200, &Issued { key: view, secret }))
}

async fn change_key(env: &Env, id: &str, command: Command) -> Result<Reply, GatewayError> {
    let object = object(id)?;
    let view = expect_key(id, key_client::call(env, &object, &command).await?)?;
    super::accounting::after_change(env, &object).await;
    register(env, &view).await;
    Ok(Reply::json_value(200, &view))
}

/// `{"object":"list","data":[...]}` of every key.
#[derive(Serialize)]
struct KeyList {
    object: &'static str,
    data: Vec<KeyView>,
}

async fn list_keys(env: &Env) -> Result<Reply, GatewayError> {
    match key_client::call(env, keys::REGISTRY_OBJECT, &Command::RegistryList).await? {
        KeyReply::Keys { keys: data } => Ok(Reply::json_value(
            200,
            &KeyList {
                object: "list",
                data,
            },
        )),
        other => Err(key_client::unexpected(other)),
    }
}

/// Records a key's current view in the registry. The key's own object is
/// the source of truth, so a failure here only delays the listing.
async fn register(env: &Env, view: &KeyView) {
    let command = Command::RegistryPut { key: view.clone() };
    if let Err(e) = key_client::call(env, keys::REGISTRY_OBJECT, &command).await {
        console_error!("admin: registry update for key {} failed: {e}", view.id);
    }
}

/// The object of a key id, refusing anything that is not a key id.
fn object(id: &str) -> Result<String, GatewayError> {
    let valid = id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit());
    if valid {
        Ok(keys::virtual_object_name(id))
    } else {
        Err(no_such_key(id))
    }
}

fn no_such_key(id: &str) -> GatewayError {
    GatewayError::KeyNotFound { id: id.to_owned() }
}

fn expect_key(id: &str, reply: KeyReply) -> Result<KeyView, GatewayError> {
    match reply {
        KeyReply::Key(view) => Ok(*view),
        KeyReply::Rejected { status: 404, .. } => Err(no_such_key(id)),
        KeyReply::Rejected { message, .. } => Err(GatewayError::InvalidRequest {
            message,
            param: None,
        }),
        other => Err(key_client::unexpected(other)),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, GatewayError> {
    serde_json::from_slice(body).map_err(|e| {
        let path = crate::config::json_path::of_error(body, &e);
        let path = if path.is_empty() { ".".into() } else { path };
        GatewayError::InvalidRequest {
            message: format!("{path}: {e}"),
            param: Some(path),
        }
    })
}

fn random() -> Result<[u8; 32], GatewayError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| GatewayError::Internal {
        message: format!("no randomness: {e}"),
    })?;
    Ok(bytes)
}
