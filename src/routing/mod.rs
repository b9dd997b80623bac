//! Routing: config + request -> ordered candidate list.
//!
//! [`plan`] yields the targets a request may go to, best first; the failover
//! loop in [`crate::gateway`] walks them. In order:
//!
//! 1. the first conditional rule whose conditions hold replaces the model's
//!    targets and strategy (`rule_for`);
//! 2. providers whose secret is not set are left out ([`candidates`]);
//! 3. **hard constraints**: data residency (the origin's rules and the key's
//!    allowed regions, intersected) and capabilities (context window, tools,
//!    vision, JSON mode, embeddings) remove targets; a constrained request
//!    is never sent outside its allowed set, failover included ([`geo`]);
//! 4. the strategy orders what is left (priority, nearest, weighted,
//!    latency, cost) (`order`; `nearest` in [`nearest`]);
//! 5. targets skipped by their circuit breaker or cooling after a 429 are
//!    dropped ([`health`]).
//!
//! Randomness and time are passed in, so selection is exact in tests.

pub mod classes;
pub mod geo;
pub mod health;
pub mod nearest;

use std::collections::BTreeMap;

pub use geo::Origin;
pub use health::{Availability, Health, target_key};

use crate::api::{ModelList, ModelObject};
use crate::config::{Condition, Config, Provider, Sticky, Strategy, Target as TargetConfig};
use crate::error::GatewayError;
use crate::providers::{self, Target, api_key_secret, fnv1a};

/// Looks up a secret (a Worker secret or var) by name.
pub type SecretLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// One target to try, with the key to send.
#[derive(Debug, Clone)]
pub struct Candidate<'c> {
    /// The provider deployment and model.
    pub target: Target<'c>,
    /// The provider key, when the provider takes one.
    pub api_key: Option<String>,
    /// Its share under the `weighted` strategy.
    pub weight: u32,
    /// The target's own attributes, for data-class policies ([`classes`]).
    pub attributes: &'c [String],
}

/// What the request needs from a target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// Estimated input tokens.
    pub input_tokens: u64,
    /// Output tokens it may produce.
    pub output_tokens: u64,
    /// It offers tools.
    pub tools: bool,
    /// It contains images.
    pub vision: bool,
    /// It asks for JSON output.
    pub json: bool,
    /// It asks for embeddings (not every wire format has them).
    pub embeddings: bool,
}

/// Everything about the request and its surroundings that routing reads.
pub struct RouteInput<'a> {
    /// Where the request comes from.
    pub origin: &'a Origin,
    /// Request headers by lower-case name.
    pub header: &'a dyn Fn(&str) -> Option<String>,
    /// The request body's `metadata` string fields.
    pub metadata: &'a BTreeMap<String, String>,
    /// The key's tier.
    pub tier: Option<&'a str>,
    /// The key's allowed jurisdictions (`None`: anywhere).
    pub key_jurisdictions: Option<&'a [String]>,
    /// The key's id, for sticky draws.
    pub key_id: &'a str,
    /// The request's `user`, for sticky draws.
    pub user: Option<&'a str>,
    /// What the request needs.
    pub needs: Needs,
    /// A uniform draw in `[0, 1)`.
    pub random: f64,
    /// Unix ms now.
    pub now_ms: u64,
    /// What this isolate knows of each target.
    pub health: &'a Health,
    /// The request's data-class requirement, if it has one ([`classes`]).
    pub data_class: Option<&'a classes::ClassRequirement>,
}

/// The ordered, available candidates for a request.
pub fn plan<'c>(
    config: &'c Config,
    model: &str,
    secret: SecretLookup<'_>,
    input: &RouteInput<'_>,
) -> Result<Vec<Candidate<'c>>, GatewayError> {
    let (mut list, strategy) = eligible(config, model, secret, input)?;
    order(&mut list, strategy, input);
    // Health: skip open breakers and cooling targets.
    let mut skipped = vec![];
    list.retain(|c| {
        let key = target_key(c.target.name, c.target.model);
        match input.health.availability(&key, input.now_ms) {
            Availability::Until(t) => {
                let rate_limited = input.health.rate_limited(&key, input.now_ms);
                skipped.push((key, t, rate_limited));
                false
            }
            Availability::Ready | Availability::Probe => true,
        }
    });
    if list.is_empty() {
        let soonest = skipped
            .iter()
            .map(|(_, t, _)| *t)
            .min()
            .unwrap_or(input.now_ms);
        let names: Vec<String> = skipped
            .iter()
            .map(|(k, t, _)| format!("{k} for {} ms", t - input.now_ms))
            .collect();
        let rate_limited = skipped.iter().all(|(_, _, limited)| *limited);
        return Err(GatewayError::Unavailable {
            message: format!(
                "Every target of `{model}` is temporarily skipped after failures or rate limits: {}.",
                names.join(", ")
            ),
            retry_after: Some((soonest - input.now_ms).div_ceil(1000).max(1)),
            rate_limited,
        });
    }
    list.truncate(config.failover.max_attempts);
    Ok(list)
}

/// The targets this request may use whatever their health, in the rule's
/// order: the first matching rule's (else the model's) targets with a key,
/// within the caller's jurisdictions, able to serve the request.
fn eligible<'c>(
    config: &'c Config,
    model: &str,
    secret: SecretLookup<'_>,
    input: &RouteInput<'_>,
) -> Result<(Vec<Candidate<'c>>, &'c Strategy), GatewayError> {
    let entry = config.models.get(model).ok_or_else(|| not_found(model))?;
    let (targets, strategy) = rule_for(entry, input);
    let mut list = resolve(config, targets, secret);
    if list.is_empty() {
        return Err(not_found(model));
    }
    // Data residency: hard, and before anything else can reorder.
    let from_origin = geo::allowed_jurisdictions(&config.residency, input.origin);
    let allowed = match (from_origin, input.key_jurisdictions) {
        (None, None) => None,
        (Some(a), None) => Some(a),
        (None, Some(k)) => Some(k.to_vec()),
        (Some(a), Some(k)) => Some(
            a.into_iter()
                .filter(|j| k.iter().any(|x| x.eq_ignore_ascii_case(j)))
                .collect(),
        ),
    };
    if let Some(allowed) = &allowed {
        list.retain(|c| {
            c.target
                .provider
                .jurisdiction
                .as_deref()
                .is_some_and(|j| allowed.iter().any(|a| a.eq_ignore_ascii_case(j)))
        });
        if list.is_empty() {
            return Err(GatewayError::Unavailable {
                message: format!(
                    "No deployment of `{model}` is in the jurisdictions this request must stay in ({}).",
                    allowed.join(", ")
                ),
                retry_after: None,
                rate_limited: false,
            });
        }
    }
    // Data-class policy (trust, issue 14): hard like residency, before ordering.
    classes::retain_eligible(&mut list, input.data_class, model)?;
    list.retain(|c| capable(c, input.needs));
    if list.is_empty() {
        return Err(GatewayError::InvalidRequest {
            message: format!(
                "No target of `{model}` can serve this request ({}).",
                describe(input.needs)
            ),
            param: Some("model".into()),
        });
    }
    Ok((list, strategy))
}

/// The targets this request may use whatever their health and order
/// (sorted `provider/model` keys, one a line): what decides which answers
/// it could get, for the response cache's key. Two requests with the same
/// fingerprint may be answered by the same targets.
pub fn fingerprint(
    config: &Config,
    model: &str,
    secret: SecretLookup<'_>,
    input: &RouteInput<'_>,
) -> Result<String, GatewayError> {
    let (list, _) = eligible(config, model, secret, input)?;
    let mut keys: Vec<String> = list
        .iter()
        .map(|c| target_key(c.target.name, c.target.model))
        .collect();
    keys.sort();
    keys.dedup();
    Ok(keys.join("\n"))
}

/// The targets and strategy for this request: the first matching rule's,
/// else the model's own.
fn rule_for<'c>(
    entry: &'c crate::config::Model,
    input: &RouteInput<'_>,
) -> (&'c [TargetConfig], &'c Strategy) {
    for rule in &entry.rules {
        if matches(&rule.when, input) {
            return (
                &rule.targets,
                rule.strategy.as_ref().unwrap_or(&entry.strategy),
            );
        }
    }
    (&entry.targets, &entry.strategy)
}

fn matches(c: &Condition, input: &RouteInput<'_>) -> bool {
    c.headers
        .iter()
        .all(|(k, v)| (input.header)(k).as_deref() == Some(v.as_str()))
        && c.metadata
            .iter()
            .all(|(k, v)| input.metadata.get(k) == Some(v))
        && (c.tiers.is_empty() || input.tier.is_some_and(|t| c.tiers.iter().any(|x| x == t)))
        && c.min_input_tokens
            .is_none_or(|m| input.needs.input_tokens >= m)
        && c.max_input_tokens
            .is_none_or(|m| input.needs.input_tokens <= m)
}

/// Whether the target can serve the request, as far as its config says
/// (unknown capabilities are assumed present); embeddings depend on the wire
/// format, not the config.
fn capable(c: &Candidate<'_>, needs: Needs) -> bool {
    let info = c.target.provider.model_info(c.target.model);
    let fits = info
        .context_window
        .is_none_or(|w| needs.input_tokens.saturating_add(needs.output_tokens) <= w);
    fits && !(needs.tools && info.tools == Some(false))
        && !(needs.vision && info.vision == Some(false))
        && !(needs.json && info.json_mode == Some(false))
        && (!needs.embeddings || providers::supports_embeddings(c.target.provider.kind))
}

fn describe(n: Needs) -> String {
    let mut parts = vec![format!(
        "~{} input + {} output tokens",
        n.input_tokens, n.output_tokens
    )];
    for (needed, name) in [
        (n.tools, "tools"),
        (n.vision, "vision"),
        (n.json, "JSON mode"),
        (n.embeddings, "embeddings"),
    ] {
        if needed {
            parts.push(name.to_owned());
        }
    }
    parts.join(", ")
}

/// Orders candidates by the strategy; ties keep the config's order.
fn order(list: &mut Vec<Candidate<'_>>, strategy: &Strategy, input: &RouteInput<'_>) {
    let ewma = |c: &Candidate<'_>| {
        input
            .health
            .ewma_ms(&target_key(c.target.name, c.target.model))
    };
    let distance = |c: &Candidate<'_>| network_ms(input.origin, c.target.provider);
    let sort_by = |list: &mut Vec<Candidate<'_>>, score: &dyn Fn(&Candidate<'_>) -> f64| {
        list.sort_by(|a, b| score(a).total_cmp(&score(b)));
    };
    match strategy {
        Strategy::Priority => {}
        Strategy::Nearest => nearest::order(list, input.origin, input.health, input.now_ms),
        Strategy::Latency => sort_by(list, &|c| ewma(c).unwrap_or_else(|| distance(c))),
        Strategy::Cost => sort_by(list, &|c| {
            let pricing = c.target.provider.model_info(c.target.model).pricing();
            pricing
                .cost(input.needs.input_tokens, input.needs.output_tokens, 0)
                .0 as f64
        }),
        Strategy::Weighted { sticky } => {
            let draw = match sticky {
                None => input.random,
                Some(Sticky::Key) => unit(input.key_id),
                Some(Sticky::User) => unit(input.user.unwrap_or(input.key_id)),
            };
            let weights: Vec<u64> = list.iter().map(|c| u64::from(c.weight)).collect();
            let chosen = pick_weighted(&weights, draw);
            let first = list.remove(chosen);
            list.insert(0, first);
        }
    }
}

/// The network distance to a provider ([`geo::network_ms`]); one that runs
/// on the Worker's own binding (Workers AI) is no distance away.
pub fn network_ms(origin: &Origin, provider: &Provider) -> f64 {
    if providers::workers_ai::runs_at_edge(provider) {
        0.0
    } else {
        geo::network_ms(origin, provider.location)
    }
}

/// The index a uniform draw in `[0, 1)` lands on, by weight.
pub fn pick_weighted(weights: &[u64], draw: f64) -> usize {
    let total: u64 = weights.iter().sum();
    if total == 0 {
        return 0;
    }
    let mut point = (draw.clamp(0.0, 1.0) * total as f64) as u64;
    for (i, w) in weights.iter().enumerate() {
        if point < *w {
            return i;
        }
        point -= w;
    }
    weights.len() - 1
}

/// A stable draw in `[0, 1)` from a string.
fn unit(s: &str) -> f64 {
    (fnv1a(s.as_bytes()) >> 11) as f64 / (1u64 << 53) as f64
}

/// The enabled candidates for a public model name, in config order.
pub fn candidates<'c>(
    config: &'c Config,
    model: &str,
    secret: SecretLookup<'_>,
) -> Result<Vec<Candidate<'c>>, GatewayError> {
    let entry = config.models.get(model).ok_or_else(|| not_found(model))?;
    let list = resolve(config, &entry.targets, secret);
    if list.is_empty() {
        return Err(not_found(model));
    }
    Ok(list)
}

/// Every target the model can use under any rule (for worst-case costs).
pub fn all_candidates<'c>(
    config: &'c Config,
    model: &str,
    secret: SecretLookup<'_>,
) -> Vec<Candidate<'c>> {
    let Some(entry) = config.models.get(model) else {
        return vec![];
    };
    let mut list = resolve(config, &entry.targets, secret);
    for rule in &entry.rules {
        list.extend(resolve(config, &rule.targets, secret));
    }
    list
}

fn resolve<'c>(
    config: &'c Config,
    targets: &'c [TargetConfig],
    secret: SecretLookup<'_>,
) -> Vec<Candidate<'c>> {
    targets
        .iter()
        .filter_map(|t| {
            let (name, provider) = config.providers.get_key_value(&t.provider)?;
            let api_key = enabled_key(provider, secret)?;
            Some(Candidate {
                target: Target {
                    name,
                    provider,
                    model: &t.model,
                },
                api_key,
                weight: t.weight.unwrap_or(1),
                attributes: &t.attributes,
            })
        })
        .collect()
}

fn not_found(model: &str) -> GatewayError {
    GatewayError::ModelNotFound {
        model: model.to_owned(),
    }
}

/// `Some(key)` when the provider is enabled: it takes no key (`Some(None)`)
/// or its secret is set and non-empty, and so is the secret it signs with,
/// if it signs (Bedrock).
fn enabled_key(provider: &Provider, secret: SecretLookup<'_>) -> Option<Option<String>> {
    if let Some(name) = providers::signing_secret(provider)
        && secret(name).is_none_or(|v| v.trim().is_empty())
    {
        return None;
    }
    match api_key_secret(provider) {
        None => Some(None),
        Some(name) => secret(name).filter(|k| !k.trim().is_empty()).map(Some),
    }
}

/// The models a caller can use: those with at least one enabled target.
pub fn list_models(config: &Config, secret: SecretLookup<'_>) -> ModelList {
    let data = config
        .models
        .keys()
        .filter_map(|name| {
            let first = candidates(config, name, secret).ok()?.into_iter().next()?;
            Some(model_object(name, first.target.name))
        })
        .collect();
    ModelList {
        object: "list",
        data,
    }
}

/// One model by name, if the caller can use it.
pub fn get_model(
    config: &Config,
    name: &str,
    secret: SecretLookup<'_>,
) -> Result<ModelObject, GatewayError> {
    let first = candidates(config, name, secret)?.into_iter().next();
    // `candidates` never returns an empty list.
    let owner = first.map(|c| c.target.name).unwrap_or_default();
    Ok(model_object(name, owner))
}

fn model_object(name: &str, owner: &str) -> ModelObject {
    ModelObject {
        id: name.to_owned(),
        object: "model",
        created: 0,
        owned_by: owner.to_owned(),
    }
}

#[cfg(test)]
mod tests;
