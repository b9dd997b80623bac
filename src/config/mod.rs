//! The routing config: one versioned JSON document, kept in Workers KV.
//!
//! [`Config::from_json`] is the only way in: serde types with
//! `deny_unknown_fields`, then [`Config::validate`] for what types cannot say.
//! Every error names the path of the bad value
//! (`models.gpt-4o.targets[1].provider: unknown provider "opnai"`), and the
//! edge never swaps a rejected document in for the last good one.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::limits::Pricing;

mod classes;
pub(crate) mod json_path;
mod policy;

pub use classes::{Cors, CustomPattern, DataClass, PiiConfig, PiiMode, PiiPolicy, is_name};
pub use policy::{
    Breaker, Condition, Failover, Location, OriginMatch, Residency, Rule, Sticky, Strategy,
};

/// The config bundled into the worker, used while KV holds none (or none valid).
pub const DEFAULT_JSON: &str = include_str!("default.json");

/// The schema version this gateway reads.
pub const VERSION: u32 = 1;

/// The whole routing config.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Editors' pointer to the JSON Schema (`src/config/schema.json`); ignored.
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Schema version; must be [`VERSION`].
    pub version: u32,
    /// Free-form label of this revision (a date, a commit), reported back by
    /// the admin API so operators can tell which document is live.
    #[serde(default)]
    pub revision: String,
    /// Upstream providers by name.
    pub providers: BTreeMap<String, Provider>,
    /// Public model names (what clients send as `model`) and their targets.
    pub models: BTreeMap<String, Model>,
    /// Request limits.
    #[serde(default)]
    pub limits: Limits,
    /// Data residency: origins whose requests must stay in given
    /// jurisdictions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub residency: Vec<Residency>,
    /// Timeouts, retries and the circuit breaker.
    #[serde(default)]
    pub failover: Failover,
    /// What the worker logs.
    #[serde(default)]
    pub logging: Logging,
    /// Data classes by name (`phi`, `pci`, ...): what a target must be to
    /// receive each, and how its requests are redacted. A request names its
    /// class with `x-gateway-data-class` or `metadata.data_class`; a key may
    /// have one by default.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data_classes: BTreeMap<String, DataClass>,
    /// Custom PII patterns for redaction policies.
    #[serde(default, skip_serializing_if = "is_default")]
    pub pii: PiiConfig,
    /// Cross-origin requests from browsers (off by default).
    #[serde(default, skip_serializing_if = "is_default")]
    pub cors: Cors,
    /// Gateway-wide usage analytics.
    #[serde(default)]
    pub analytics: Analytics,
    /// Opt-in request logs to R2.
    #[serde(default)]
    pub request_logs: RequestLogs,
    /// Failover and budget alerts.
    #[serde(default)]
    pub alerts: Alerts,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Gateway-wide usage analytics (`GET /admin/analytics`, the dashboard).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct Analytics {
    /// How long an isolate gathers its rollups (and request-log lines)
    /// before it sends them: one call per day object and one R2 write per
    /// interval, however many requests. Analytics lag by about this.
    pub flush_ms: u64,
}

impl Default for Analytics {
    fn default() -> Self {
        Analytics { flush_ms: 5_000 }
    }
}

/// Which requests are logged to the `REQUEST_LOGS` R2 bucket, and how.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct RequestLogs {
    /// Key ids whose requests are logged (`static` for the static keys).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// Public model names whose requests are logged.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// `full`: request and response bodies; `metadata`: the facts only.
    pub bodies: LogBodies,
    /// Replace all message content (every string but structural fields
    /// such as `role`, `model`, `type`) by `"[redacted]"`.
    pub redact: bool,
    /// Days a log object is kept; older days are deleted by the isolates
    /// that write logs (about once an hour each).
    pub retention_days: u32,
    /// Largest body kept per request and direction; a larger one is cut
    /// (left out when redacting).
    pub max_body_bytes: u64,
}

impl Default for RequestLogs {
    fn default() -> Self {
        RequestLogs {
            keys: vec![],
            models: vec![],
            bodies: LogBodies::Full,
            redact: false,
            retention_days: 30,
            max_body_bytes: 64 * 1024,
        }
    }
}

impl RequestLogs {
    /// Whether a request of this key and model is logged: two short lists
    /// looked at, nothing copied.
    pub fn wants(&self, key: &str, model: &str) -> bool {
        (!self.keys.is_empty() && self.keys.iter().any(|k| k == key))
            || (!self.models.is_empty() && self.models.iter().any(|m| m == model))
    }
}

/// What a request log keeps of the bodies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum LogBodies {
    /// Request and response bodies (redacted if `redact`).
    #[default]
    Full,
    /// Only the facts: key, model, provider, status, tokens, cost, timings.
    Metadata,
}

/// Alerts: where they go, and how often.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct Alerts {
    /// The webhook; none: alerts are only listed at `GET /admin/alerts`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Webhook>,
    /// At most one alert per event and target within this long.
    pub cooldown_ms: u64,
}

impl Default for Alerts {
    fn default() -> Self {
        Alerts {
            webhook: None,
            cooldown_ms: 600_000,
        }
    }
}

/// A JSON webhook for alerts, signed with HMAC-SHA256.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// Where alerts are POSTed.
    pub url: String,
    /// Name of the Worker secret holding the signing key; unset: alerts go
    /// unsigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The events sent (default: all).
    #[serde(default = "all_alerts")]
    pub events: Vec<crate::observe::alerts::AlertKind>,
}

fn all_alerts() -> Vec<crate::observe::alerts::AlertKind> {
    crate::observe::alerts::AlertKind::ALL.to_vec()
}

/// What the worker writes to its log (Workers Logs, `wrangler tail`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Logging {
    /// The per-request usage events (`"event":"request"`).
    #[serde(default)]
    pub requests: RequestLog,
}

/// How per-request events are logged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum RequestLog {
    /// Gathered per isolate and written about once a second as one line,
    /// `{"event":"requests","requests":[...]}`: every event is kept, and a
    /// log write (a runtime call that costs as much as a tenth of a request)
    /// is paid once per batch, not per request.
    #[default]
    Batched,
    /// One line per request, written when it ends.
    Each,
    /// Not logged (usage still reaches the key objects).
    Off,
}

/// One upstream provider account or deployment.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Provider {
    /// Wire format and vendor preset.
    pub kind: ProviderKind,
    /// Base URL; defaults to the vendor's. Required for `azure` and
    /// `openai-compatible`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Name of the Worker secret holding the API key; defaults to the
    /// vendor's usual name (`OPENAI_API_KEY`, ...). A provider whose secret is
    /// not set is disabled, so a fresh deploy serves only what it has keys for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret: Option<String>,
    /// Azure OpenAI `api-version` query parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Extra static headers sent upstream (e.g. OpenRouter's `HTTP-Referer`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Where this deployment runs, for nearest-first routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// Region label reported in `x-gateway-region` (e.g. `westeurope`). For
    /// `bedrock` it is required: the AWS region requests go to and are
    /// signed for (`eu-central-1`); for `vertex` too: the Vertex AI location
    /// (`europe-west4`, the multi-regions `eu` and `us`, or `global`). A known
    /// region gives the provider its `jurisdiction` and `location` unless
    /// they are set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Legal jurisdiction of the deployment (e.g. `eu`, `us`), for data
    /// residency. A constrained request never goes to a deployment without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jurisdiction: Option<String>,
    /// `bedrock`: name of the Worker secret holding the AWS access key id
    /// (default `AWS_ACCESS_KEY_ID`). The provider is disabled while it or
    /// the secret access key is not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_access_key_id_secret: Option<String>,
    /// `bedrock`: name of the Worker secret holding the AWS secret access
    /// key (default `AWS_SECRET_ACCESS_KEY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_secret_access_key_secret: Option<String>,
    /// `bedrock`: name of the Worker secret holding an STS session token
    /// for temporary credentials (default `AWS_SESSION_TOKEN`); sent only
    /// when that secret is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_session_token_secret: Option<String>,
    /// `vertex`: the Google Cloud project id the models are served in
    /// (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// `workers-ai`: the Cloudflare account id of the OpenAI-compatible REST
    /// endpoint (required unless `binding` or `base_url` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// `workers-ai`: the name of the Worker's Workers AI binding (`AI`).
    /// Set, requests run through it (no egress, no token); unset, through
    /// the REST endpoint with `CLOUDFLARE_API_TOKEN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<String>,
    /// What the account or deployment guarantees, for data-class policies
    /// (`hipaa`, `zero_data_retention`, `no_training`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<String>,
    /// What the gateway knows of each provider-side model: prices (for
    /// budgets) and the output cap (for worst-case reservations).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, ModelInfo>,
}

/// Facts about one provider-side model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    /// USD per million input tokens.
    #[serde(default)]
    pub input_per_mtok: f64,
    /// USD per million output tokens.
    #[serde(default)]
    pub output_per_mtok: f64,
    /// USD per million cached input tokens (the input price when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_mtok: Option<f64>,
    /// USD per million input tokens written to the prompt cache (Anthropic's
    /// `cache_creation_input_tokens`). When absent: on an `anthropic`
    /// provider 1.25 × the input price, Anthropic's price of its default
    /// five-minute writes (one-hour writes cost 2 ×: set it for models used
    /// that way); elsewhere the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_per_mtok: Option<f64>,
    /// The most output tokens one answer can have; bounds the reservation of
    /// a request that sets no `max_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    /// Input + output tokens the model accepts; a longer request skips it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_window: Option<u64>,
    /// Whether it can call tools (`false` skips it for requests with tools).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<bool>,
    /// Whether it reads images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vision: Option<bool>,
    /// Whether it honours `response_format`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_mode: Option<bool>,
}

impl ModelInfo {
    /// The prices.
    pub fn pricing(&self) -> Pricing {
        Pricing {
            input_per_mtok: self.input_per_mtok,
            output_per_mtok: self.output_per_mtok,
            cached_input_per_mtok: self.cached_input_per_mtok,
            cache_write_per_mtok: self.cache_write_per_mtok,
        }
    }
}

impl Provider {
    /// Facts about a provider-side model; all zero when not configured
    /// (an unpriced model costs nothing against budgets).
    ///
    /// An Anthropic model without a cache-write price gets Anthropic's:
    /// [`crate::limits::CACHE_WRITE_MARKUP`] times its input price. No other
    /// provider reports cache writes, so theirs stay at the input price and
    /// their worst cases do not grow.
    pub fn model_info(&self, model: &str) -> ModelInfo {
        let mut info = self.models.get(model).copied().unwrap_or_default();
        if self.kind == ProviderKind::Anthropic && info.cache_write_per_mtok.is_none() {
            info.cache_write_per_mtok =
                Some(info.input_per_mtok * crate::limits::CACHE_WRITE_MARKUP);
        }
        info
    }
}

/// Wire format and vendor preset of a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// api.openai.com.
    Openai,
    /// Azure OpenAI: per-deployment URLs, `api-key` header, `api-version`.
    Azure,
    /// Groq (OpenAI-compatible).
    Groq,
    /// Mistral (OpenAI-compatible).
    Mistral,
    /// DeepSeek (OpenAI-compatible).
    Deepseek,
    /// Together AI (OpenAI-compatible).
    Together,
    /// Fireworks AI (OpenAI-compatible).
    Fireworks,
    /// OpenRouter (OpenAI-compatible).
    Openrouter,
    /// xAI (OpenAI-compatible).
    Xai,
    /// Perplexity (OpenAI-compatible).
    Perplexity,
    /// Anthropic's Messages API (its own wire format, translated).
    Anthropic,
    /// Any OpenAI-compatible server at `base_url` (Ollama, vLLM, LM Studio).
    OpenaiCompatible,
    /// Google Gemini's `generateContent` format (AI Studio / Gemini API).
    Gemini,
    /// Amazon Bedrock Runtime's Converse API in one AWS `region`, signed
    /// with AWS credentials (Signature Version 4).
    Bedrock,
    /// Google Vertex AI in one `region` of one `project`: Gemini models in
    /// the Gemini format, Anthropic's (`claude-*`) in the Messages format,
    /// authorized by a service account's OAuth tokens.
    Vertex,
    /// Cloudflare Workers AI: through the Worker's `binding` when set (runs
    /// on Cloudflare's network, no egress), else its OpenAI-compatible REST
    /// endpoint for `account_id`.
    WorkersAi,
    /// The built-in deterministic demo model: no network, no key.
    Mock,
}

/// A public model name and where it is served.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// Targets in priority order; failover walks them in the order the
    /// strategy gives.
    pub targets: Vec<Target>,
    /// How the targets are ordered.
    #[serde(default, skip_serializing_if = "is_priority")]
    pub strategy: Strategy,
    /// Conditional routes, checked in order before the default targets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// Answer repeated requests from the location's cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CachePolicy>,
    /// Race a slow first target against the next one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedge: Option<Hedge>,
    /// Finish a stream whose target broke after its first token on the next
    /// target, as one stream.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continuation: bool,
    /// PII redaction for every request of this model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pii: Option<PiiPolicy>,
}

/// The exact-match response cache of one model.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CachePolicy {
    /// How long an answer is served from the cache, in seconds.
    pub ttl_s: u64,
    /// Whose requests share answers.
    #[serde(default)]
    pub scope: CacheScope,
    /// Also cache requests that sample (a `temperature` above 0, or none:
    /// the providers' default is 1), whose answers differ from one call to
    /// the next. Off by default: a cached answer would repeat one draw.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sampled: bool,
}

/// Whose requests may be answered with each other's cached answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum CacheScope {
    /// One key's own requests only.
    #[default]
    Key,
    /// The requests of keys of the same team (a key with no team: its own).
    Team,
    /// Every caller's.
    Global,
}

/// Hedged requests: when the first target has produced no first token (a
/// whole answer, for a request that does not stream) after a while, the
/// next candidate is started too; the first to answer wins and the other is
/// aborted at once.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Hedge {
    /// Start the next target after this many milliseconds; with
    /// `after_percentile`, only while the target has too few samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_ms: Option<u64>,
    /// Start the next target after this percentile (50–99) of the first
    /// target's time to first byte, as this location has seen it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_percentile: Option<u8>,
    /// Targets started beside the first (1 or 2).
    #[serde(default = "one")]
    pub max_extra: u8,
}

fn one() -> u8 {
    1
}

fn is_priority(s: &Strategy) -> bool {
    *s == Strategy::Priority
}

/// One provider deployment of a model.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// A key of `providers`.
    pub provider: String,
    /// The provider-side model name (the deployment name for Azure).
    pub model: String,
    /// Relative share for the `weighted` strategy (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Attributes of this deployment beyond its provider's, for data-class
    /// policies (a BAA that covers one model, say).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<String>,
}

/// Request limits.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted request body; larger ones get 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// How long an isolate may admit a virtual key's requests from a lease
    /// (a slice of the key's limits) without asking the key's object. It is
    /// also how long a revocation, rotation, expiry or limit change may take
    /// to reach every isolate. `0` turns leases off: every request of a
    /// virtual key is admitted by its object. At most 60,000.
    #[serde(default = "default_lease_ttl_ms")]
    pub lease_ttl_ms: u64,
    /// How long a settled request's usage may wait in its isolate before it
    /// is sent to the key's object with the others (one call per key per
    /// interval, however many requests). Usage reports lag by about this.
    #[serde(default = "default_flush_ms")]
    pub flush_ms: u64,
    /// Deepest nesting of arrays and objects accepted in a request body
    /// (at most 128, serde's own bound). Checked before anything parses the
    /// body, so no body can exhaust the stack, here or at a provider.
    #[serde(default = "default_max_json_depth")]
    pub max_json_depth: u32,
    /// Most messages (`messages`, or the items of a Responses `input`) in
    /// one request.
    #[serde(default = "default_max_messages")]
    pub max_messages: u32,
    /// Most tools one request may offer.
    #[serde(default = "default_max_tools")]
    pub max_tools: u32,
    /// Most content parts (blocks) over all messages of one request.
    #[serde(default = "default_max_content_parts")]
    pub max_content_parts: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: default_max_body_bytes(),
            lease_ttl_ms: default_lease_ttl_ms(),
            flush_ms: default_flush_ms(),
            max_json_depth: default_max_json_depth(),
            max_messages: default_max_messages(),
            max_tools: default_max_tools(),
            max_content_parts: default_max_content_parts(),
        }
    }
}

fn default_max_json_depth() -> u32 {
    // Chat bodies nest about 6 deep; tool schemas add their own depth.
    64
}

fn default_max_messages() -> u32 {
    // Long agent sessions (Claude Code) reach the low thousands.
    5_000
}

fn default_max_tools() -> u32 {
    // MCP-heavy agents offer a few hundred; OpenAI itself takes 128.
    512
}

fn default_max_content_parts() -> u32 {
    20_000
}

fn default_lease_ttl_ms() -> u64 {
    10_000
}

fn default_flush_ms() -> u64 {
    1_000
}

fn default_max_body_bytes() -> u64 {
    // Room for a few base64 images; well under the Workers request limit.
    8 * 1024 * 1024
}

impl Config {
    /// Whether routing `model` reads where the request comes from: data
    /// residency rules, or a strategy ordered by distance. When it does
    /// not, the edge does not read `request.cf` at all.
    pub fn needs_origin(&self, model: &str) -> bool {
        if !self.residency.is_empty() {
            return true;
        }
        let by_distance = |s: &Strategy| matches!(s, Strategy::Nearest | Strategy::Latency);
        self.models.get(model).is_some_and(|m| {
            by_distance(&m.strategy)
                || m.rules
                    .iter()
                    .any(|r| r.strategy.as_ref().is_some_and(by_distance))
        })
    }
}

/// One problem in a config document, with the path of the bad value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path, e.g. `models.gpt-4o.targets[1].provider`; empty for the root.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl Config {
    /// Parses and validates a document. Every problem found is returned.
    pub fn from_json(text: &str) -> Result<Config, Vec<ConfigError>> {
        let mut config: Config = serde_json::from_str(text).map_err(|e| {
            vec![ConfigError {
                path: json_path::of_error(text.as_bytes(), &e),
                message: e.to_string(),
            }]
        })?;
        config.apply_region_presets();
        config.validate()?;
        Ok(config)
    }

    /// Gives providers in a known region the jurisdiction and location of
    /// that region, where the config sets none (an explicit value always
    /// wins). Routing then reads one set of fields whatever their source.
    fn apply_region_presets(&mut self) {
        for p in self.providers.values_mut() {
            let known = match (p.kind, p.region.as_deref()) {
                (ProviderKind::Bedrock, Some(code)) => {
                    crate::aws::regions::region(code).map(|r| (r.jurisdiction, r.location))
                }
                (ProviderKind::Vertex, Some(code)) => {
                    crate::google::regions::region(code).map(|r| (r.jurisdiction, r.location))
                }
                (ProviderKind::Azure, Some(code)) => {
                    crate::azure::region(code).map(|r| (r.jurisdiction, r.location))
                }
                (ProviderKind::WorkersAi, Some(code)) => {
                    crate::providers::workers_ai::region(code).map(|r| (r.jurisdiction, r.location))
                }
                _ => None,
            };
            if let Some((jurisdiction, location)) = known {
                p.jurisdiction
                    .get_or_insert_with(|| jurisdiction.to_owned());
                p.location.get_or_insert(location);
            }
        }
    }

    /// The bundled default. It is checked by a unit test, so this cannot fail
    /// in a released build.
    pub fn bundled() -> Config {
        Config::from_json(DEFAULT_JSON)
            .unwrap_or_else(|errors| panic!("the bundled default config is invalid: {errors:?}"))
    }

    /// Checks what the types cannot express.
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut errors = vec![];
        let mut err = |path: String, message: String| errors.push(ConfigError { path, message });
        if self.version != VERSION {
            err(
                "version".into(),
                format!("unsupported version {}, expected {VERSION}", self.version),
            );
        }
        if self.models.is_empty() {
            err("models".into(), "at least one model is required".into());
        }
        // Zero would fail every request (no attempt, a timeout at once, no
        // body, no message).
        let (f, l) = (&self.failover, &self.limits);
        for (path, value) in [
            ("failover.connect_timeout_ms", f.connect_timeout_ms),
            ("failover.first_byte_timeout_ms", f.first_byte_timeout_ms),
            ("failover.total_timeout_ms", f.total_timeout_ms),
            ("failover.max_attempts", f.max_attempts as u64),
            ("limits.max_body_bytes", l.max_body_bytes),
            ("limits.max_messages", u64::from(l.max_messages)),
            ("limits.max_tools", u64::from(l.max_tools)),
            ("limits.max_content_parts", u64::from(l.max_content_parts)),
        ] {
            if value == 0 {
                err(path.into(), "must be greater than 0".into());
            }
        }
        if self.limits.lease_ttl_ms > crate::limits::MAX_LEASE_TTL_MS {
            err(
                "limits.lease_ttl_ms".into(),
                format!(
                    "at most {} (0 turns leases off)",
                    crate::limits::MAX_LEASE_TTL_MS
                ),
            );
        }
        if !(10..=10_000).contains(&self.limits.flush_ms) {
            err(
                "limits.flush_ms".into(),
                "must be between 10 and 10000".into(),
            );
        }
        if !(2..=128).contains(&self.limits.max_json_depth) {
            err(
                "limits.max_json_depth".into(),
                "must be between 2 and 128".into(),
            );
        }
        if !(100..=60_000).contains(&self.analytics.flush_ms) {
            err(
                "analytics.flush_ms".into(),
                "must be between 100 and 60000".into(),
            );
        }
        if !(1..=3_650).contains(&self.request_logs.retention_days) {
            err(
                "request_logs.retention_days".into(),
                "must be between 1 and 3650".into(),
            );
        }
        if let Some(w) = &self.alerts.webhook {
            if !(w.url.starts_with("https://") || w.url.starts_with("http://")) {
                err(
                    "alerts.webhook.url".into(),
                    format!("must start with https:// or http://, got {:?}", w.url),
                );
            }
            if let Some(secret) = &w.secret
                && (secret.is_empty()
                    || !secret
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_'))
            {
                err(
                    "alerts.webhook.secret".into(),
                    format!("must be a secret name of letters, digits and _, got {secret:?}"),
                );
            }
        }
        for (name, p) in &self.providers {
            let path = format!("providers.{name}");
            match (&p.base_url, p.kind) {
                (None, ProviderKind::Azure | ProviderKind::OpenaiCompatible) => err(
                    format!("{path}.base_url"),
                    format!("required for kind {:?}", p.kind),
                ),
                (Some(_), ProviderKind::Mock) => err(
                    format!("{path}.base_url"),
                    "the mock provider has no URL".into(),
                ),
                (Some(url), _) if !(url.starts_with("https://") || url.starts_with("http://")) => {
                    err(
                        format!("{path}.base_url"),
                        format!("must start with https:// or http://, got {url:?}"),
                    )
                }
                _ => {}
            }
            let aws_secrets = [
                ("aws_access_key_id_secret", &p.aws_access_key_id_secret),
                (
                    "aws_secret_access_key_secret",
                    &p.aws_secret_access_key_secret,
                ),
                ("aws_session_token_secret", &p.aws_session_token_secret),
            ];
            for (field, secret) in [("api_key_secret", &p.api_key_secret)]
                .into_iter()
                .chain(aws_secrets)
            {
                if let Some(secret) = secret
                    && (secret.is_empty()
                        || !secret
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_'))
                {
                    err(
                        format!("{path}.{field}"),
                        format!("must be a secret name of letters, digits and _, got {secret:?}"),
                    );
                }
            }
            if p.kind == ProviderKind::Bedrock {
                match p.region.as_deref() {
                    None => err(
                        format!("{path}.region"),
                        "required for kind Bedrock (the AWS region to call and sign for)".into(),
                    ),
                    Some(code) if !crate::aws::regions::is_region_code(code) => err(
                        format!("{path}.region"),
                        format!("not an AWS region code: {code:?}"),
                    ),
                    Some(_) => {}
                }
                if p.api_key_secret.is_some() {
                    err(
                        format!("{path}.api_key_secret"),
                        "kind Bedrock signs with AWS credentials: name their secrets in aws_access_key_id_secret, aws_secret_access_key_secret and aws_session_token_secret".into(),
                    );
                }
            } else {
                for (field, secret) in aws_secrets {
                    if secret.is_some() {
                        err(
                            format!("{path}.{field}"),
                            format!("only kind Bedrock takes AWS credentials, not {:?}", p.kind),
                        );
                    }
                }
            }
            if p.kind == ProviderKind::Vertex {
                use crate::google::regions::{GLOBAL, is_location_code};
                match p.region.as_deref() {
                    None => err(
                        format!("{path}.region"),
                        "required for kind Vertex (the Vertex AI location: europe-west4, eu, global, ...)".into(),
                    ),
                    Some(code) if !is_location_code(code) => err(
                        format!("{path}.region"),
                        format!("not a Vertex AI location: {code:?}"),
                    ),
                    // The global endpoint processes anywhere: it cannot be
                    // resident in one jurisdiction.
                    Some(GLOBAL) => {
                        if let Some(j) = p.jurisdiction.as_deref().filter(|j| *j != GLOBAL) {
                            err(
                                format!("{path}.jurisdiction"),
                                format!("region `global` processes requests anywhere, not only in `{j}`; use a regional or multi-regional location (`eu`, `europe-west4`), or set jurisdiction to \"global\""),
                            );
                        }
                    }
                    Some(_) => {}
                }
                let project_ok = p.project.as_deref().is_some_and(|id| {
                    !id.is_empty()
                        && id.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.:".contains(&b)
                        })
                });
                if !project_ok {
                    err(
                        format!("{path}.project"),
                        match &p.project {
                            None => "required for kind Vertex (the Google Cloud project id)".into(),
                            Some(id) => format!("not a Google Cloud project id: {id:?}"),
                        },
                    );
                }
            } else if p.project.is_some() {
                err(
                    format!("{path}.project"),
                    format!(
                        "only kind Vertex takes a Google Cloud project, not {:?}",
                        p.kind
                    ),
                );
            }
            if p.kind == ProviderKind::WorkersAi {
                let word = |v: &str, extra: &[u8]| {
                    !v.is_empty()
                        && v.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
                };
                if let Some(b) = p.binding.as_deref().filter(|b| !word(b, b"_")) {
                    err(
                        format!("{path}.binding"),
                        format!("must be a binding name of letters, digits and _, got {b:?}"),
                    );
                }
                match p.account_id.as_deref() {
                    Some(id) if !word(id, b"") => err(
                        format!("{path}.account_id"),
                        format!("not a Cloudflare account id: {id:?}"),
                    ),
                    None if p.binding.is_none() && p.base_url.is_none() => err(
                        format!("{path}.account_id"),
                        "required for kind WorkersAi without a binding (the account of the REST endpoint)".into(),
                    ),
                    _ => {}
                }
                if p.binding.is_some() && p.api_key_secret.is_some() {
                    err(
                        format!("{path}.api_key_secret"),
                        "a Workers AI binding takes no token; name a secret only for the REST endpoint".into(),
                    );
                }
            } else {
                for (field, set) in [
                    ("account_id", p.account_id.is_some()),
                    ("binding", p.binding.is_some()),
                ] {
                    if set {
                        err(
                            format!("{path}.{field}"),
                            format!("only kind WorkersAi takes `{field}`, not {:?}", p.kind),
                        );
                    }
                }
            }
            if let Some(loc) = p.location
                && !(loc.lat.abs() <= 90.0 && loc.lon.abs() <= 180.0)
            {
                err(
                    format!("{path}.location"),
                    format!("not a point on Earth: {}, {}", loc.lat, loc.lon),
                );
            }
            for (model, info) in &p.models {
                if !info.pricing().is_valid() {
                    err(
                        format!("{path}.models.{model}"),
                        format!(
                            "prices must be between 0 and {} USD per million tokens",
                            crate::limits::MAX_PRICE_PER_MTOK
                        ),
                    );
                }
                // Zero would make the model serve nothing (no output, no room).
                for (field, value) in [
                    ("max_output_tokens", info.max_output_tokens),
                    ("context_window", info.context_window),
                ] {
                    if value == Some(0) {
                        err(
                            format!("{path}.models.{model}.{field}"),
                            "must be greater than 0".into(),
                        );
                    }
                }
            }
            for header in p.headers.keys() {
                let lower = header.to_ascii_lowercase();
                if lower == "authorization"
                    || lower == "api-key"
                    || lower == "x-api-key"
                    || lower == "x-goog-api-key"
                {
                    err(
                        format!("{path}.headers.{header}"),
                        "credentials belong in a secret, not in the config".into(),
                    );
                } else if !crate::trust::headers::configurable_upstream_header(&lower) {
                    err(
                        format!("{path}.headers.{header}"),
                        "not a header a provider request may carry (hop-by-hop, cookie, host or length)".into(),
                    );
                }
            }
        }
        for (name, m) in &self.models {
            let path = format!("models.{name}");
            if name.trim().is_empty() || name.chars().any(char::is_whitespace) {
                err(
                    path.clone(),
                    "model names must be non-empty and contain no spaces".into(),
                );
            }
            if m.targets.is_empty() {
                err(
                    format!("{path}.targets"),
                    "at least one target is required".into(),
                );
            }
            if let Some(c) = &m.cache
                && c.ttl_s == 0
            {
                err(
                    format!("{path}.cache.ttl_s"),
                    "must be greater than 0".into(),
                );
            }
            if let Some(h) = &m.hedge {
                if h.after_ms.is_none() && h.after_percentile.is_none() {
                    err(
                        format!("{path}.hedge"),
                        "give after_ms or after_percentile".into(),
                    );
                }
                if h.after_percentile.is_some_and(|p| !(50..=99).contains(&p)) {
                    err(
                        format!("{path}.hedge.after_percentile"),
                        "must be between 50 and 99".into(),
                    );
                }
                if !(1..=2).contains(&h.max_extra) {
                    err(format!("{path}.hedge.max_extra"), "must be 1 or 2".into());
                }
            }
            for (i, t) in m.targets.iter().enumerate() {
                let tpath = format!("{path}.targets[{i}]");
                if !self.providers.contains_key(&t.provider) {
                    err(
                        format!("{tpath}.provider"),
                        format!("unknown provider {:?}", t.provider),
                    );
                }
                if t.model.trim().is_empty() {
                    err(format!("{tpath}.model"), "must not be empty".into());
                }
                // A cross-region inference profile sends each request to any
                // region of its geography: it is only as resident as that.
                if let Some(p) = self.providers.get(&t.provider)
                    && p.kind == ProviderKind::Bedrock
                    && let (Some(wants), Some(have)) = (
                        crate::aws::regions::inference_profile_jurisdiction(&t.model),
                        p.jurisdiction.as_deref(),
                    )
                    && !wants.eq_ignore_ascii_case(have)
                {
                    err(
                        format!("{tpath}.model"),
                        format!(
                            "the inference profile {:?} may be served anywhere in `{wants}`, outside provider {:?}'s jurisdiction `{have}`; use a profile of that jurisdiction, or set the provider's jurisdiction to {wants:?}",
                            t.model, t.provider
                        ),
                    );
                }
            }
        }
        classes::validate(self, &mut err);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match Config::from_json(text) {
            Ok(_) => vec![],
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
    }

    /// The JSON Schema in the repo is the one the types produce. Refresh it
    /// with `UPDATE_SCHEMA=1 cargo test config::tests::schema`.
    #[test]
    fn schema_file_matches_the_types() {
        let schema = schemars::schema_for!(Config);
        let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/config/schema.json");
        if std::env::var_os("UPDATE_SCHEMA").is_some() {
            std::fs::write(path, &text).unwrap();
        }
        let stored = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            stored == text,
            "src/config/schema.json is stale: run UPDATE_SCHEMA=1 cargo test config::tests::schema"
        );
    }

    /// `scripts/config validate FILE` runs this with `CONFIG_FILE` set: the
    /// same validation the gateway applies when it loads the document.
    #[test]
    #[ignore = "run by scripts/config"]
    fn validate_config_file() {
        let Some(path) = std::env::var_os("CONFIG_FILE") else {
            panic!("set CONFIG_FILE to the document to check");
        };
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        match Config::from_json(&text) {
            Ok(c) => println!(
                "valid: revision {:?}, {} providers, {} models",
                c.revision,
                c.providers.len(),
                c.models.len()
            ),
            Err(errors) => {
                for e in &errors {
                    println!("invalid: {e}");
                }
                panic!("{} problem(s) in {}", errors.len(), path.display());
            }
        }
    }

    #[test]
    fn bundled_default_is_valid_and_serves_demo() {
        let c = Config::bundled();
        let demo = &c.models["demo"].targets[0];
        assert_eq!(c.providers[&demo.provider].kind, ProviderKind::Mock);
    }

    #[test]
    fn unknown_provider_is_named_by_path() {
        let e = errors(
            r#"{"version":1,"providers":{"openai":{"kind":"openai"}},
                "models":{"gpt-4o":{"targets":[{"provider":"openai","model":"a"},{"provider":"opnai","model":"b"}]}}}"#,
        );
        assert_eq!(
            e,
            [r#"models.gpt-4o.targets[1].provider: unknown provider "opnai""#]
        );
    }

    #[test]
    fn prices_are_bounded_so_none_counts_as_free() {
        // Found by the `config` fuzz target: 5.5e260 USD per million tokens
        // passed validation and priced every token at 0.
        let doc = |price: &str| {
            format!(
                r#"{{"version":1,"providers":{{"o":{{"kind":"openai","models":{{"m":{{"input_per_mtok":{price},"output_per_mtok":2}}}}}}}},"models":{{"m":{{"targets":[{{"provider":"o","model":"m"}}]}}}}}}"#
            )
        };
        assert_eq!(
            errors(&doc("5.5e260")),
            ["providers.o.models.m: prices must be between 0 and 1000000 USD per million tokens"]
        );
        assert_eq!(errors(&doc("-1")).len(), 1);
        assert!(Config::from_json(&doc("1000000")).is_ok());
        assert!(Config::from_json(&doc("150")).is_ok());
    }

    #[test]
    fn serde_errors_carry_the_path() {
        let e = errors(r#"{"version":1,"providers":{"x":{"kind":"opnai"}},"models":{}}"#);
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("providers.x.kind: unknown variant `opnai`"),
            "{e:?}"
        );
        let e = errors(r#"{"version":1,"providers":{},"models":{"m":{"targets":[],"weight":1}}}"#);
        assert!(
            e[0].starts_with("models.m.weight: unknown field `weight`"),
            "{e:?}"
        );
        let e = errors("[]");
        assert!(
            e[0].starts_with("invalid length") && e[0].contains("expected struct Config"),
            "{e:?}"
        );
    }

    #[test]
    fn reports_every_problem_at_once() {
        let e = errors(
            r#"{"version":2,"providers":{"az":{"kind":"azure"},"c":{"kind":"openai","base_url":"ftp://x","headers":{"Authorization":"k"}}},
                "models":{"m":{"targets":[]}},"limits":{"max_body_bytes":0}}"#,
        );
        assert_eq!(
            e,
            [
                "version: unsupported version 2, expected 1",
                "limits.max_body_bytes: must be greater than 0",
                "providers.az.base_url: required for kind Azure",
                r#"providers.c.base_url: must start with https:// or http://, got "ftp://x""#,
                "providers.c.headers.Authorization: credentials belong in a secret, not in the config",
                "models.m.targets: at least one target is required",
            ]
        );
    }

    #[test]
    fn zeros_that_would_fail_every_request_are_refused() {
        let e = errors(
            r#"{"version":1,"providers":{"p":{"kind":"openai","models":{"x":{"max_output_tokens":0,"context_window":0}}}},
                "models":{"m":{"targets":[{"provider":"p","model":"x"}]}},
                "failover":{"max_attempts":0,"connect_timeout_ms":0,"first_byte_timeout_ms":0,"total_timeout_ms":0}}"#,
        );
        assert_eq!(
            e,
            [
                "failover.connect_timeout_ms: must be greater than 0",
                "failover.first_byte_timeout_ms: must be greater than 0",
                "failover.total_timeout_ms: must be greater than 0",
                "failover.max_attempts: must be greater than 0",
                "providers.p.models.x.max_output_tokens: must be greater than 0",
                "providers.p.models.x.context_window: must be greater than 0",
            ]
        );
    }

    #[test]
    fn bedrock_regions_preset_jurisdiction_and_location_unless_set() {
        let c = Config::from_json(
            r#"{"version":1,"providers":{
                  "fra":{"kind":"bedrock","region":"eu-central-1"},
                  "own":{"kind":"bedrock","region":"eu-central-1","jurisdiction":"de","location":{"lat":1,"lon":2}},
                  "new":{"kind":"bedrock","region":"xx-moon-1"},
                  "azure":{"kind":"azure","base_url":"https://x","region":"eu-central-1"}},
                "models":{"m":{"targets":[{"provider":"fra","model":"x"}]}}}"#,
        )
        .unwrap();
        let fra = &c.providers["fra"];
        assert_eq!(fra.jurisdiction.as_deref(), Some("eu"));
        assert_eq!(
            fra.location,
            Some(Location {
                lat: 50.11,
                lon: 8.68
            })
        );
        let own = &c.providers["own"];
        assert_eq!(own.jurisdiction.as_deref(), Some("de"));
        assert_eq!(own.location, Some(Location { lat: 1.0, lon: 2.0 }));
        // An unknown region gets no guess; other kinds' regions are labels.
        assert_eq!(c.providers["new"].jurisdiction, None);
        assert_eq!(c.providers["azure"].jurisdiction, None);
    }

    #[test]
    fn bedrock_providers_are_validated() {
        let e = errors(
            r#"{"version":1,"providers":{
                  "a":{"kind":"bedrock"},
                  "b":{"kind":"bedrock","region":"EU Central","api_key_secret":"K"},
                  "c":{"kind":"openai","aws_access_key_id_secret":"A"},
                  "d":{"kind":"bedrock","region":"us-east-1","aws_secret_access_key_secret":"bad name"}},
                "models":{"m":{"targets":[{"provider":"a","model":"x"}]}}}"#,
        );
        assert_eq!(
            e,
            [
                "providers.a.region: required for kind Bedrock (the AWS region to call and sign for)",
                r#"providers.b.region: not an AWS region code: "EU Central""#,
                "providers.b.api_key_secret: kind Bedrock signs with AWS credentials: name their secrets in aws_access_key_id_secret, aws_secret_access_key_secret and aws_session_token_secret",
                "providers.c.aws_access_key_id_secret: only kind Bedrock takes AWS credentials, not Openai",
                r#"providers.d.aws_secret_access_key_secret: must be a secret name of letters, digits and _, got "bad name""#,
            ]
        );
    }

    #[test]
    fn inference_profiles_must_stay_in_the_providers_jurisdiction() {
        let config = |model: &str, jurisdiction: &str| {
            errors(&format!(
                r#"{{"version":1,"providers":{{"b":{{"kind":"bedrock","region":"eu-central-1"{jurisdiction}}}}},
                    "models":{{"m":{{"targets":[{{"provider":"b","model":"{model}"}}]}}}}}}"#
            ))
        };
        assert!(config("eu.anthropic.claude-sonnet-4-5-20250929-v1:0", "").is_empty());
        assert!(config("anthropic.claude-3-haiku-20240307-v1:0", "").is_empty());
        let e = config("global.anthropic.claude-sonnet-4-5-20250929-v1:0", "");
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("models.m.targets[0].model: the inference profile \"global.anthropic")
                && e[0].contains("outside provider \"b\"'s jurisdiction `eu`"),
            "{e:?}"
        );
        // Saying so explicitly is the operator's choice.
        assert!(
            config(
                "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
                r#","jurisdiction":"global""#
            )
            .is_empty()
        );
    }

    #[test]
    fn defaults_fill_optional_fields() {
        let c = Config::from_json(
            r#"{"version":1,"providers":{"d":{"kind":"mock"}},"models":{"m":{"targets":[{"provider":"d","model":"x"}]}}}"#,
        )
        .unwrap();
        assert_eq!(c.limits.max_body_bytes, 8 * 1024 * 1024);
        assert_eq!(c.revision, "");
    }
}
