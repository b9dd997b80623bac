//! Routing: config + request -> ordered candidate list.
//!
//! The router yields candidates best-first; the failover loop in
//! [`crate::gateway`] takes the next one when the last failed in a retryable
//! way. Today the order is the config's priority order, filtered to the
//! providers that are enabled (their secret is set).

use crate::api::{ModelList, ModelObject};
use crate::config::{Config, Provider};
use crate::error::GatewayError;
use crate::providers::{Target, api_key_secret};

/// Looks up a secret (a Worker secret or var) by name.
pub type SecretLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// One target to try, with the key to send.
#[derive(Debug, Clone)]
pub struct Candidate<'c> {
    /// The provider deployment and model.
    pub target: Target<'c>,
    /// The provider key, when the provider takes one.
    pub api_key: Option<String>,
}

/// The enabled candidates for a public model name, best first.
pub fn candidates<'c>(
    config: &'c Config,
    model: &str,
    secret: SecretLookup<'_>,
) -> Result<Vec<Candidate<'c>>, GatewayError> {
    let not_found = || GatewayError::ModelNotFound {
        model: model.to_owned(),
    };
    let entry = config.models.get(model).ok_or_else(not_found)?;
    let list: Vec<Candidate<'c>> = entry
        .targets
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
            })
        })
        .collect();
    if list.is_empty() {
        return Err(not_found());
    }
    Ok(list)
}

/// `Some(key)` when the provider is enabled: it takes no key (`Some(None)`)
/// or its secret is set and non-empty.
fn enabled_key(provider: &Provider, secret: SecretLookup<'_>) -> Option<Option<String>> {
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
mod tests {
    use super::*;

    const CONFIG: &str = r#"{"version":1,
      "providers":{"demo":{"kind":"mock"},"openai":{"kind":"openai"},"backup":{"kind":"groq","api_key_secret":"BACKUP_KEY"}},
      "models":{"demo":{"targets":[{"provider":"demo","model":"d"}]},
                "gpt":{"targets":[{"provider":"openai","model":"gpt-4o"},{"provider":"backup","model":"llama"}]}}}"#;

    fn secrets(names: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |n| {
            names
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn keeps_priority_order_and_skips_providers_without_a_secret() {
        let c = Config::from_json(CONFIG).unwrap();
        let all = secrets(&[("OPENAI_API_KEY", "sk-o"), ("BACKUP_KEY", "gk")]);
        let list = candidates(&c, "gpt", &all).unwrap();
        let names: Vec<_> = list
            .iter()
            .map(|c| (c.target.name, c.api_key.as_deref()))
            .collect();
        assert_eq!(names, [("openai", Some("sk-o")), ("backup", Some("gk"))]);

        let only_backup = secrets(&[("OPENAI_API_KEY", " "), ("BACKUP_KEY", "gk")]);
        let list = candidates(&c, "gpt", &only_backup).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].target.model, "llama");
    }

    #[test]
    fn unknown_or_disabled_model_is_not_found() {
        let c = Config::from_json(CONFIG).unwrap();
        let none = secrets(&[]);
        assert!(matches!(
            candidates(&c, "nope", &none),
            Err(GatewayError::ModelNotFound { .. })
        ));
        assert!(matches!(
            candidates(&c, "gpt", &none),
            Err(GatewayError::ModelNotFound { .. })
        ));
        assert_eq!(candidates(&c, "demo", &none).unwrap()[0].api_key, None);
    }

    #[test]
    fn model_list_shows_only_usable_models() {
        let c = Config::from_json(CONFIG).unwrap();
        let ids = |s: &dyn Fn(&str) -> Option<String>| -> Vec<String> {
            list_models(&c, s).data.into_iter().map(|m| m.id).collect()
        };
        assert_eq!(ids(&secrets(&[])), ["demo"]);
        assert_eq!(ids(&secrets(&[("BACKUP_KEY", "k")])), ["demo", "gpt"]);
        assert_eq!(
            get_model(&c, "gpt", &secrets(&[("BACKUP_KEY", "k")]))
                .unwrap()
                .owned_by,
            "backup"
        );
    }
}
