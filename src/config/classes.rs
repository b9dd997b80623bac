//! Trust settings in the config: data classes and the attributes targets
//! need for them, PII redaction policies and custom patterns, and CORS.
//!
//! A data class (`phi`, `pci`, `public`, ...) names what a request carries.
//! Its policy says what a target must be to receive it: attributes the
//! provider (or the one target) declares (`hipaa`, `zero_data_retention`,
//! `no_training`, ...) and the jurisdictions it may be in. Routing leaves
//! every other target out before ordering and failover
//! ([`crate::routing::classes`]). A policy may also turn on PII redaction
//! ([`PiiPolicy`]) for its requests.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a target must be to receive a data class, and how its requests are
/// redacted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct DataClass {
    /// Attributes every eligible target has (the provider's `attributes`
    /// and the target's own, together), e.g. `["hipaa"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub require: Vec<String>,
    /// Jurisdictions an eligible target's provider is in (its
    /// `jurisdiction`); anywhere when absent. A provider without a
    /// jurisdiction is never eligible when this is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jurisdictions: Option<Vec<String>>,
    /// PII redaction for requests of this class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pii: Option<PiiPolicy>,
}

/// PII redaction before a request leaves the gateway: set on a data class,
/// a model or a key. Where several apply, the strictest mode wins (`block`,
/// then `redact`, then `restore`) and their kinds add up.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PiiPolicy {
    /// What happens to the personal data found.
    pub mode: PiiMode,
    /// Kinds to look for: `email`, `phone`, `card_number`, `iban`, `us_ssn`,
    /// `ip_address`, or a custom pattern's name. Every built-in kind and
    /// every custom pattern when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kinds: Option<Vec<String>>,
}

/// What redaction does with the personal data it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum PiiMode {
    /// Replaced by placeholders (`[EMAIL_1]`) upstream; the originals are
    /// put back in the answer, streamed or not.
    Restore,
    /// Replaced by placeholders upstream; the answer keeps them.
    Redact,
    /// The request is refused (400 naming the kinds found); nothing is sent.
    Block,
}

/// Custom PII patterns, by name; a policy's `kinds` names them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PiiConfig {
    /// Patterns by name (lower-case letters, digits and `_`; the
    /// placeholder is the name in capitals: `employee_id` -> `[EMPLOYEE_ID_1]`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub patterns: BTreeMap<String, CustomPattern>,
}

/// A custom pattern: masks and literal terms, matched at word boundaries.
///
/// A mask is a template, not a regular expression: `#` is a digit, `@` a
/// letter, `*` a letter or digit, `{n}` or `{n,m}` repeats the class before
/// it, `\` takes the next character literally, and any other character
/// matches itself (letters in either case). `EMP-#{6}` matches `EMP-004211`;
/// `@@#{6,9}` a passport-like number. The gateway carries no regex engine
/// (it would grow the worker by far more than the rest of redaction).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CustomPattern {
    /// Masks, any of which matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masks: Vec<String>,
    /// Literal terms (project names, patient names), matched whole and
    /// case-insensitively.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub terms: Vec<String>,
}

/// Cross-origin requests from browsers: off unless origins are listed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Cors {
    /// Origins allowed to call the gateway from a browser, exactly as the
    /// browser sends them (`https://app.example.com`), or `*` for any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub origins: Vec<String>,
    /// How long a browser may cache a preflight answer.
    #[serde(default = "default_max_age_s")]
    pub max_age_s: u64,
}

impl Default for Cors {
    fn default() -> Self {
        Cors {
            origins: Vec::new(),
            max_age_s: default_max_age_s(),
        }
    }
}

fn default_max_age_s() -> u64 {
    600
}

impl Cors {
    /// Whether an origin may call the gateway.
    pub fn allows(&self, origin: &str) -> bool {
        self.origins.iter().any(|o| o == "*" || o == origin)
    }
}

/// Whether a data-class, attribute or pattern name is well formed: lower-case
/// ASCII letters, digits, `_` and `-`, 1 to 64 of them.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Checks the trust settings; every problem is reported with its path.
pub(super) fn validate(config: &super::Config, err: &mut dyn FnMut(String, String)) {
    let name_rule = "must be 1 to 64 lower-case letters, digits, _ or -";
    for (name, p) in &config.providers {
        for (i, a) in p.attributes.iter().enumerate() {
            if !is_name(a) {
                err(
                    format!("providers.{name}.attributes[{i}]"),
                    name_rule.into(),
                );
            }
        }
    }
    for (name, m) in &config.models {
        let rules = m.rules.iter().flat_map(|r| r.targets.iter());
        for (i, t) in m.targets.iter().chain(rules).enumerate() {
            for a in &t.attributes {
                if !is_name(a) {
                    err(
                        format!("models.{name}.targets[{i}].attributes"),
                        name_rule.into(),
                    );
                }
            }
        }
        if let Some(pii) = &m.pii {
            validate_policy(config, pii, &format!("models.{name}.pii"), err);
        }
    }
    for (name, class) in &config.data_classes {
        let path = format!("data_classes.{name}");
        if !is_name(name) {
            err(path.clone(), format!("class names {name_rule}"));
        }
        for (i, a) in class.require.iter().enumerate() {
            if !is_name(a) {
                err(format!("{path}.require[{i}]"), name_rule.into());
            }
        }
        if class.jurisdictions.as_ref().is_some_and(Vec::is_empty) {
            err(
                format!("{path}.jurisdictions"),
                "must list at least one jurisdiction (leave it out for anywhere)".into(),
            );
        }
        if let Some(pii) = &class.pii {
            validate_policy(config, pii, &format!("{path}.pii"), err);
        }
    }
    for (name, pattern) in &config.pii.patterns {
        let path = format!("pii.patterns.{name}");
        if !is_name(name) || name.contains('-') {
            err(
                path.clone(),
                "pattern names must be 1 to 64 lower-case letters, digits or _".into(),
            );
        }
        if crate::trust::pii::BUILTIN_KINDS.contains(&name.as_str()) {
            err(path.clone(), "a built-in kind's name".into());
        }
        if pattern.masks.is_empty() && pattern.terms.is_empty() {
            err(path.clone(), "needs at least one mask or term".into());
        }
        for (i, mask) in pattern.masks.iter().enumerate() {
            if let Err(e) = crate::trust::pii::Mask::compile(mask) {
                err(format!("{path}.masks[{i}]"), e);
            }
        }
        for (i, term) in pattern.terms.iter().enumerate() {
            let len = term.trim().chars().count();
            if !(2..=200).contains(&len) {
                err(
                    format!("{path}.terms[{i}]"),
                    "must be 2 to 200 characters".into(),
                );
            }
        }
    }
    for (i, origin) in config.cors.origins.iter().enumerate() {
        let ok = origin == "*"
            || ((origin.starts_with("https://") || origin.starts_with("http://"))
                && !origin.ends_with('/')
                && origin.len() <= 200
                && origin.bytes().all(|b| b.is_ascii_graphic()));
        if !ok {
            err(
                format!("cors.origins[{i}]"),
                format!("must be `*` or an origin like https://app.example.com, got {origin:?}"),
            );
        }
    }
    if config.cors.max_age_s > 86_400 {
        err("cors.max_age_s".into(), "at most 86400".into());
    }
}

fn validate_policy(
    config: &super::Config,
    policy: &PiiPolicy,
    path: &str,
    err: &mut dyn FnMut(String, String),
) {
    for (i, kind) in policy.kinds.iter().flatten().enumerate() {
        let known = crate::trust::pii::BUILTIN_KINDS.contains(&kind.as_str())
            || config.pii.patterns.contains_key(kind);
        if !known {
            err(
                format!("{path}.kinds[{i}]"),
                format!(
                    "unknown kind {kind:?} (built in: {}; or a name in pii.patterns)",
                    crate::trust::pii::BUILTIN_KINDS.join(", ")
                ),
            );
        }
    }
}
