//! The request path's trust step, between admission and routing
//! ([`screen`]), and its counterpart on the answer ([`Prepared::restore`]).
//!
//! 1. **class** — the request's data class (`x-gateway-data-class`, else
//!    `metadata.data_class`) and its key's become one requirement
//!    ([`routing::classes::requirement`]) that routing applies before
//!    ordering and failover.
//! 2. **PII** — the policies of the key, the model and the classes combine
//!    ([`trust::combined_policy`]); with one, the body's conversation text
//!    is redacted in place ([`trust::redact_body`]) and the request is
//!    prepared again from the redacted body, so every target, translated
//!    or passed through, receives the same placeholders. `block` refuses a
//!    request with personal data (400 naming the kinds); `restore` keeps the
//!    vault for the answer.
//! 3. **restore** — a `restore` request's answer gets its originals back,
//!    whole or as it streams ([`trust::restore`]).

use std::collections::BTreeMap;
use std::rc::Rc;

use crate::config::{Config, PiiMode, PiiPolicy};
use crate::error::GatewayError;
use crate::ingress::Ingress;
use crate::routing::classes::{self, CLASS_HEADER, ClassRequirement};
use crate::trust::{self, pii, restore};

use super::{Ctx, Prepare, Prepared, Reply, ReplyBody, Request};

/// What the trust step decided for a request, kept on [`Prepared`].
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// Its data-class requirement, for routing.
    pub class: Option<ClassRequirement>,
    /// The PII mode that applied, if any.
    pub pii_mode: Option<PiiMode>,
    /// Personal data found, by kind (for the usage log; never values).
    pub pii_found: BTreeMap<String, u32>,
    /// The placeholders to put back (`restore` mode).
    restore: Option<Rc<pii::Vault>>,
}

impl Trust {
    /// The class label for the usage log (`phi`, `phi+internal`).
    pub fn class_label(&self) -> Option<&str> {
        self.class.as_ref().map(|c| c.label.as_str())
    }
}

/// What the trust step needs of the key.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyTrust<'a> {
    /// The key's data class.
    pub data_class: Option<&'a str>,
    /// The key's PII policy.
    pub pii: Option<&'a PiiPolicy>,
}

/// The trust step: returns the request to route (re-prepared from the
/// redacted body, which `slot` keeps, when redaction changed it) and, when
/// it must not be sent at all, why. The request keeps what was decided
/// ([`Prepared::trust`]) either way, so a refusal is logged with its class
/// and the kinds found.
pub fn screen<'a>(
    config: &'a Config,
    ctx: &Ctx<'_>,
    mut prepared: Prepared<'a>,
    prepare: Prepare,
    slot: &'a mut Vec<u8>,
    header: &dyn Fn(&str) -> Option<String>,
    key: KeyTrust<'_>,
) -> (Prepared<'a>, Result<(), GatewayError>) {
    let mut decided = Trust::default();
    // 1. class: read only when the config has classes or the key has one.
    if !config.data_classes.is_empty() || key.data_class.is_some() {
        let named = header(CLASS_HEADER).map(|c| (c, CLASS_HEADER)).or_else(|| {
            prepared
                .metadata_field("data_class")
                .map(|c| (c, "metadata.data_class"))
        });
        let named = named.as_ref().map(|(c, from)| (c.trim(), *from));
        match classes::requirement(config, named, key.data_class) {
            Ok(class) => decided.class = class,
            Err(e) => {
                prepared.trust = decided;
                return (prepared, Err(e));
            }
        }
    }
    // 2. PII
    let ingress = match &prepared.req {
        Request::Chat(_) => Some(Ingress::Chat),
        Request::Ingress(r) => Some(r.ingress()),
        Request::Embeddings(_) => None,
    };
    let class_policies = decided
        .class
        .iter()
        .flat_map(|c| c.label.split('+'))
        .filter_map(|name| config.data_classes.get(name)?.pii.as_ref());
    let model_policy = config
        .models
        .get(prepared.model())
        .and_then(|m| m.pii.as_ref());
    let policy = trust::combined_policy(
        key.pii
            .into_iter()
            .chain(model_policy)
            .chain(class_policies),
    );
    let (Some(policy), Some(ingress)) = (policy, ingress) else {
        prepared.trust = decided;
        return (prepared, Ok(()));
    };
    decided.pii_mode = Some(policy.mode);
    let detector = pii::Detector::for_policy(config, &policy);
    let mut vault = pii::Vault::new();
    let redacted = match trust::redact_body(prepared.body, ingress, &detector, &mut vault) {
        Ok(r) => r,
        Err(e) => {
            prepared.trust = decided;
            return (prepared, Err(e));
        }
    };
    decided.pii_found = vault.take_counts();
    let Some(body) = redacted else {
        prepared.trust = decided;
        return (prepared, Ok(()));
    };
    if policy.mode == PiiMode::Block {
        let param = match ingress {
            Ingress::Responses => "input",
            Ingress::Chat | Ingress::Messages => "messages",
        };
        let refusal = GatewayError::PiiDetected {
            kinds: decided.pii_found.keys().cloned().collect(),
            param: param.to_owned(),
        };
        prepared.trust = decided;
        return (prepared, Err(refusal));
    }
    if policy.mode == PiiMode::Restore {
        decided.restore = Some(Rc::new(vault));
    }
    *slot = body;
    let slot: &'a Vec<u8> = slot;
    match prepare(config, ctx, slot) {
        Ok(mut again) => {
            again.trust = decided;
            (again, Ok(()))
        }
        // The redacted body is the client's with some strings replaced by
        // placeholders: it parses whenever the original did.
        Err(e) => {
            prepared.trust = decided;
            (prepared, Err(e))
        }
    }
}

impl Prepared<'_> {
    /// The answer with the originals put back, when the request was
    /// redacted in `restore` mode; as it is otherwise.
    pub fn restore(&self, mut reply: Reply) -> Reply {
        let Some(vault) = &self.trust.restore else {
            return reply;
        };
        if !(200..300).contains(&reply.status) {
            return reply;
        }
        let protocol = match &self.req {
            Request::Chat(_) => Ingress::Chat,
            Request::Ingress(r) => r.ingress(),
            Request::Embeddings(_) => return reply,
        };
        reply.body = match reply.body {
            ReplyBody::Full(bytes) => {
                ReplyBody::Full(restore::restore_body(&bytes, vault).unwrap_or(bytes))
            }
            ReplyBody::Stream(stream) => ReplyBody::Stream(restore::restore_stream(
                stream,
                restore::StreamRestorer::new(vault.clone(), protocol),
            )),
        };
        reply
    }
}
