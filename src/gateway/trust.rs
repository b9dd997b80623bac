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
    let restoring = policy.mode == PiiMode::Restore;
    if restoring {
        decided.restore = Some(Rc::new(vault));
    }
    *slot = body;
    let slot: &'a Vec<u8> = slot;
    match prepare(config, ctx, slot) {
        Ok(mut again) => {
            if restoring && let Request::Chat(req) = &mut again.req {
                // Restoration rewrites the stream: it stays in Rust.
                req.native_pipe = false;
            }
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
        let event_stream = reply
            .headers
            .iter()
            .any(|(k, v)| *k == "content-type" && v.starts_with("text/event-stream"));
        reply.body = match reply.body {
            // A whole stream (a cached one, replayed): its deltas, restored
            // as a stream would be.
            ReplyBody::Full(bytes) if event_stream => {
                let mut r = restore::StreamRestorer::new(vault.clone(), protocol);
                let mut out = Vec::with_capacity(bytes.len());
                r.push(&bytes, &mut out);
                r.finish(&mut out);
                ReplyBody::Full(out)
            }
            ReplyBody::Full(bytes) => {
                ReplyBody::Full(restore::restore_body(&bytes, vault).unwrap_or(bytes))
            }
            ReplyBody::Stream(stream) => ReplyBody::Stream(restore::restore_stream(
                stream,
                restore::StreamRestorer::new(vault.clone(), protocol),
            )),
            // Never for a restored request (its stream is not piped: see
            // `ChatRequest::native_pipe`).
            native @ ReplyBody::Native(_) => native,
        };
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::{Caller, prepare, prepare_messages};
    use crate::routing::{Health, Origin};

    const CONFIG: &str = r#"{"version":1,
      "providers":{"plain":{"kind":"openai"},"hipaa":{"kind":"openai","attributes":["hipaa"]}},
      "models":{"m":{"targets":[{"provider":"plain","model":"p"},{"provider":"hipaa","model":"h"}]},
                "r":{"targets":[{"provider":"plain","model":"p"}],"pii":{"mode":"restore"}},
                "b":{"targets":[{"provider":"plain","model":"p"}],"pii":{"mode":"block","kinds":["email"]}}},
      "data_classes":{"phi":{"require":["hipaa"],"pii":{"mode":"redact","kinds":["phone"]}}}}"#;

    fn with<T>(f: impl FnOnce(&Config, &Ctx<'_>) -> T) -> T {
        let config = Config::from_json(CONFIG).unwrap();
        let secret = |_: &str| Some("k".to_owned());
        let health = Health::new();
        let ctx = Ctx {
            now_ms: 0,
            clock: &|| 0,
            secret: &secret,
            health: &health,
        };
        f(&config, &ctx)
    }

    fn route(p: &mut Prepared<'_>, ctx: &Ctx<'_>) -> Result<Vec<String>, GatewayError> {
        let no_headers = |_: &str| None;
        let caller = Caller {
            origin: &Origin::default(),
            header: &no_headers,
            key_id: "k",
            tier: None,
            jurisdictions: None,
            random: 0.0,
        };
        p.route(ctx, &caller)?;
        Ok(p.candidates
            .iter()
            .map(|c| c.target.name.to_owned())
            .collect())
    }

    #[test]
    fn a_class_from_metadata_or_the_key_routes_to_eligible_targets_only() {
        with(|config, ctx| {
            let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"metadata":{"data_class":"phi"}}"#;
            let mut slot = Vec::new();
            let p = prepare(config, ctx, body).unwrap();
            let (mut p, ok) = screen(
                config,
                ctx,
                p,
                prepare,
                &mut slot,
                &|_| None,
                KeyTrust::default(),
            );
            ok.unwrap();
            assert_eq!(p.trust.class_label(), Some("phi"));
            assert_eq!(route(&mut p, ctx).unwrap(), ["hipaa"]);
            let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
            let mut slot = Vec::new();
            let p = prepare(config, ctx, body).unwrap();
            let key = KeyTrust {
                data_class: Some("phi"),
                pii: None,
            };
            let (mut p, ok) = screen(config, ctx, p, prepare, &mut slot, &|_| None, key);
            ok.unwrap();
            assert_eq!(route(&mut p, ctx).unwrap(), ["hipaa"]);
        });
    }

    #[test]
    fn a_classs_pii_policy_redacts_before_routing() {
        with(|config, ctx| {
            let body = br#"{"model":"m","messages":[{"role":"user","content":"call +1 415 555 0132 or a@b.io"}]}"#;
            let mut slot = Vec::new();
            let p = prepare(config, ctx, body).unwrap();
            let header = |h: &str| (h == CLASS_HEADER).then(|| "phi".to_owned());
            let (p, ok) = screen(
                config,
                ctx,
                p,
                prepare,
                &mut slot,
                &header,
                KeyTrust::default(),
            );
            ok.unwrap();
            // The class asks for phones only; the email stays.
            let Request::Chat(req) = &p.req else { panic!() };
            assert!(
                req.get("messages")
                    .unwrap()
                    .get()
                    .contains("call [PHONE_1] or a@b.io")
            );
            assert_eq!(p.trust.pii_found["phone"], 1);
            assert!(req.native_pipe, "redact mode leaves the stream to the pipe");
        });
    }

    #[test]
    fn restore_mode_keeps_the_stream_in_rust_and_restores_the_answer() {
        with(|config, ctx| {
            let body = br#"{"model":"r","stream":true,"messages":[{"role":"user","content":"mail a@b.io"}]}"#;
            let mut slot = Vec::new();
            let p = prepare(config, ctx, body).unwrap();
            let (p, ok) = screen(
                config,
                ctx,
                p,
                prepare,
                &mut slot,
                &|_| None,
                KeyTrust::default(),
            );
            ok.unwrap();
            let Request::Chat(req) = &p.req else { panic!() };
            assert!(!req.native_pipe);
            let reply = Reply::json(
                200,
                br#"{"choices":[{"message":{"content":"to [EMAIL_1]"}}]}"#.to_vec(),
            );
            let ReplyBody::Full(body) = p.restore(reply).body else {
                panic!()
            };
            assert_eq!(
                body,
                br#"{"choices":[{"message":{"content":"to a@b.io"}}]}"#
            );
        });
    }

    #[test]
    fn block_mode_refuses_with_the_kinds_and_counts_them() {
        with(|config, ctx| {
            let body = br#"{"model":"b","messages":[{"role":"user","content":"mail a@b.io"}]}"#;
            let mut slot = Vec::new();
            let p = prepare(config, ctx, body).unwrap();
            let (p, refused) = screen(
                config,
                ctx,
                p,
                prepare,
                &mut slot,
                &|_| None,
                KeyTrust::default(),
            );
            let e = refused.unwrap_err();
            assert_eq!(e.status(), 400);
            assert!(e.to_string().contains("email"));
            assert_eq!(p.trust.pii_found["email"], 1);
            // A Messages body is refused in the same way, naming `messages`.
            let body =
                br#"{"model":"b","max_tokens":5,"messages":[{"role":"user","content":"a@b.io"}]}"#;
            let mut slot = Vec::new();
            let p = prepare_messages(config, ctx, body).unwrap();
            let (_, refused) = screen(
                config,
                ctx,
                p,
                prepare_messages,
                &mut slot,
                &|_| None,
                KeyTrust::default(),
            );
            assert!(
                matches!(refused, Err(GatewayError::PiiDetected { ref param, .. }) if param == "messages")
            );
        });
    }

    #[test]
    fn an_unknown_class_is_refused_before_anything_else() {
        with(|config, ctx| {
            let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
            let mut slot = Vec::new();
            let p = prepare(config, ctx, body).unwrap();
            let header = |h: &str| (h == CLASS_HEADER).then(|| "nope".to_owned());
            let (_, refused) = screen(
                config,
                ctx,
                p,
                prepare,
                &mut slot,
                &header,
                KeyTrust::default(),
            );
            assert_eq!(refused.unwrap_err().status(), 400);
        });
    }

    #[test]
    fn a_chat_stream_that_is_rewritten_is_never_piped_natively() {
        let config = Config::from_json(CONFIG).unwrap();
        let (name, provider) = config.providers.get_key_value("plain").unwrap();
        let target = crate::providers::Target {
            name,
            provider,
            model: "p",
        };
        let body = br#"{"model":"r","stream":true,"messages":[{"role":"user","content":"x"}]}"#;
        let mut req = crate::api::ChatRequest::parse(body).unwrap();
        let piped = |req: &crate::api::ChatRequest<'_>| match crate::ingress::Call::Chat(req)
            .stream_translator(&target, 0)
        {
            crate::providers::Translator::Sse(t) => t.native_tail().is_some(),
            crate::providers::Translator::EventStream(_) => false,
        };
        assert!(piped(&req));
        req.native_pipe = false;
        assert!(!piped(&req));
    }
}
