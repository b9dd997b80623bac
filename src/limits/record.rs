//! What a virtual key is: its record (stored by its Durable Object) and the
//! admin API's shapes for creating, viewing and changing it.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use super::money::Money;
use crate::config::PiiPolicy;
use crate::error::GatewayError;

/// Request and token rate limits; `None` is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    /// Requests in any sliding 60-second window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// Requests per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpd: Option<u64>,
    /// Input + output tokens in any sliding 60-second window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Requests in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u64>,
}

/// Spending caps in USD; `None` is uncapped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budgets {
    /// Per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_usd: Option<Money>,
    /// Per UTC calendar month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_usd: Option<Money>,
    /// Over the key's life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_usd: Option<Money>,
}

/// The settings an admin chooses for a key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySettings {
    /// A label.
    pub name: String,
    /// Who holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The team it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// A tier name routing rules can match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Free-form tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Public model names it may use; `None` is all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_models: Option<Vec<String>>,
    /// Jurisdictions its requests may be served in; `None` is anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_regions: Option<Vec<String>>,
    /// The data class of its requests (a name in the config's
    /// `data_classes`). A request that names another class must satisfy
    /// both policies: a key's class is a floor its callers cannot lower.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_class: Option<String>,
    /// PII redaction for its requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pii: Option<PiiPolicy>,
    /// Rate limits.
    #[serde(default)]
    pub limits: RateLimits,
    /// Budgets.
    #[serde(default)]
    pub budgets: Budgets,
    /// Unix ms after which it is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// Admit every request with the key's object, before the provider is
    /// called: no leases, no admission overlapped with the upstream call.
    /// Exact at once (revocation, limit changes) at the cost of a round trip
    /// to the object on every request.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict_admission: bool,
}

/// A changed subset of [`KeySettings`]: present fields replace, `null`
/// clears an optional one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPatch {
    /// New name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// New owner (`null` clears).
    #[serde(
        default,
        deserialize_with = "some",
        skip_serializing_if = "Option::is_none"
    )]
    pub owner: Option<Option<String>>,
    /// New team (`null` clears).
    #[serde(
        default,
        deserialize_with = "some",
        skip_serializing_if = "Option::is_none"
    )]
    pub team: Option<Option<String>>,
    /// New tier (`null` clears).
    #[serde(
        default,
        deserialize_with = "some",
        skip_serializing_if = "Option::is_none"
    )]
    pub tier: Option<Option<String>>,
    /// New tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    /// New model scope (`null`: all models).
    #[serde(
        default,
        deserialize_with = "some",
        skip_serializing_if = "Option::is_none"
    )]
    pub allowed_models: Option<Option<Vec<String>>>,
    /// New region scope (`null`: anywhere).
    #[serde(
        default,
        deserialize_with = "some",
        skip_serializing_if = "Option::is_none"
    )]
    pub allowed_regions: Option<Option<Vec<String>>>,
    /// New data class (`null` clears).
    #[serde(
        default,
        deserialize_with = "some",
        skip_serializing_if = "Option::is_none"
    )]
    pub data_class: Option<Option<String>>,
    /// New PII policy (`null` clears).
    #[serde(
        default,
        deserialize_with = "some",
        skip_serializing_if = "Option::is_none"
    )]
    pub pii: Option<Option<PiiPolicy>>,
    /// Rate limits changed one by one: the ones given replace, `null`
    /// lifts one, the others stay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsPatch>,
    /// Budgets changed one by one, the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budgets: Option<BudgetsPatch>,
    /// New expiry (`null`: never).
    #[serde(
        default,
        deserialize_with = "some",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at_ms: Option<Option<u64>>,
    /// New admission mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict_admission: Option<bool>,
}

/// A change to [`RateLimits`]: each field given replaces that limit
/// (`null` lifts it); a field left out keeps its value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsPatch {
    /// Requests in any sliding 60-second window.
    #[serde(
        default,
        deserialize_with = "some",
        skip_serializing_if = "Option::is_none"
    )]
    pub rpm: Option<Option<u64>>,
    /// Requests per UTC day.
    #[serde(
        default,
        deserialize_with = "some",
        skip_serializing_if = "Option::is_none"
    )]
    pub rpd: Option<Option<u64>>,
    /// Input + output tokens in any sliding 60-second window.
    #[serde(
        default,
        deserialize_with = "some",
        skip_serializing_if = "Option::is_none"
    )]
    pub tpm: Option<Option<u64>>,
    /// Requests in flight at once.
    #[serde(
        default,
        deserialize_with = "some",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_concurrent: Option<Option<u64>>,
}

/// A change to [`Budgets`], field by field like [`LimitsPatch`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetsPatch {
    /// Per UTC day.
    #[serde(
        default,
        deserialize_with = "some",
        skip_serializing_if = "Option::is_none"
    )]
    pub daily_usd: Option<Option<Money>>,
    /// Per UTC calendar month.
    #[serde(
        default,
        deserialize_with = "some",
        skip_serializing_if = "Option::is_none"
    )]
    pub monthly_usd: Option<Option<Money>>,
    /// Over the key's life.
    #[serde(
        default,
        deserialize_with = "some",
        skip_serializing_if = "Option::is_none"
    )]
    pub total_usd: Option<Option<Money>>,
}

/// `to = new` for each field the patch gives.
fn patch<T>(to: &mut Option<T>, new: Option<Option<T>>) {
    if let Some(v) = new {
        *to = v;
    }
}

/// Tells a present `null` (`Some(None)`) from an absent field (`None`).
fn some<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// The longest `name` a key may have, in characters.
const MAX_NAME_CHARS: usize = 256;

/// Checks a key's `name`: present and not blank, at most
/// 256 characters (it is shown in lists and logs).
pub fn check_name(name: &str) -> Result<(), GatewayError> {
    let message = if name.trim().is_empty() {
        "A key needs a `name`.".to_owned()
    } else if name.chars().count() > MAX_NAME_CHARS {
        format!("A key's `name` is at most {MAX_NAME_CHARS} characters.")
    } else {
        return Ok(());
    };
    Err(GatewayError::InvalidRequest {
        message,
        param: Some("name".into()),
    })
}

/// Checks a key's trust settings: a data class and PII kinds are names
/// (whether the config knows them is decided per request, failing closed).
pub fn check_trust(data_class: Option<&str>, pii: Option<&PiiPolicy>) -> Result<(), GatewayError> {
    if let Some(c) = data_class
        && !crate::config::is_name(c)
    {
        return Err(GatewayError::InvalidRequest {
            message: format!(
                "`data_class` must be a class name (lower-case letters, digits, _ or -), got {c:?}."
            ),
            param: Some("data_class".into()),
        });
    }
    if let Some(kind) = pii
        .and_then(|p| p.kinds.as_ref())
        .and_then(|k| k.iter().find(|k| !crate::config::is_name(k)))
    {
        return Err(GatewayError::InvalidRequest {
            message: format!("`pii.kinds` holds {kind:?}, which is not a kind name."),
            param: Some("pii".into()),
        });
    }
    Ok(())
}

impl KeySettings {
    /// Applies a patch.
    pub fn apply(&mut self, p: KeyPatch) {
        if let Some(v) = p.name {
            self.name = v;
        }
        if let Some(v) = p.owner {
            self.owner = v;
        }
        if let Some(v) = p.team {
            self.team = v;
        }
        if let Some(v) = p.tier {
            self.tier = v;
        }
        if let Some(v) = p.tags {
            self.tags = v;
        }
        if let Some(v) = p.allowed_models {
            self.allowed_models = v;
        }
        if let Some(v) = p.allowed_regions {
            self.allowed_regions = v;
        }
        if let Some(v) = p.data_class {
            self.data_class = v;
        }
        if let Some(v) = p.pii {
            self.pii = v;
        }
        if let Some(l) = p.limits {
            patch(&mut self.limits.rpm, l.rpm);
            patch(&mut self.limits.rpd, l.rpd);
            patch(&mut self.limits.tpm, l.tpm);
            patch(&mut self.limits.max_concurrent, l.max_concurrent);
        }
        if let Some(b) = p.budgets {
            patch(&mut self.budgets.daily_usd, b.daily_usd);
            patch(&mut self.budgets.monthly_usd, b.monthly_usd);
            patch(&mut self.budgets.total_usd, b.total_usd);
        }
        if let Some(v) = p.expires_at_ms {
            self.expires_at_ms = v;
        }
        if let Some(v) = p.strict_admission {
            self.strict_admission = v;
        }
    }
}

/// A key as its Durable Object stores it. The secret itself is never
/// stored: only its SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The public id (part of the secret's prefix; names the Durable Object).
    pub id: String,
    /// The admin's settings.
    pub settings: KeySettings,
    /// SHA-256 of the full secret, hex.
    pub secret_hash: String,
    /// A recognisable, non-secret fragment: `sk-gw-<id>_…<last 4>`.
    pub secret_hint: String,
    /// Revoked keys are refused.
    #[serde(default)]
    pub revoked: bool,
    /// Unix ms.
    pub created_ms: u64,
    /// Unix ms of the last change.
    pub updated_ms: u64,
}

/// What the admin API shows of a key (no hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyView {
    /// The public id.
    pub id: String,
    /// Always `gateway.key`.
    pub object: String,
    /// `sk-gw-<id>_…<last 4>`.
    pub secret_hint: String,
    /// Revoked or not.
    pub revoked: bool,
    /// Unix ms.
    pub created_ms: u64,
    /// Unix ms.
    pub updated_ms: u64,
    /// The settings.
    #[serde(flatten)]
    pub settings: KeySettings,
}

impl From<&KeyRecord> for KeyView {
    fn from(r: &KeyRecord) -> Self {
        KeyView {
            id: r.id.clone(),
            object: "gateway.key".to_owned(),
            secret_hint: r.secret_hint.clone(),
            revoked: r.revoked,
            created_ms: r.created_ms,
            updated_ms: r.updated_ms,
            settings: r.settings.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_tells_null_from_absent() {
        let mut s = KeySettings {
            name: "a".into(),
            owner: Some("o".into()),
            allowed_models: Some(vec!["m".into()]),
            ..KeySettings::default()
        };
        let p: KeyPatch =
            serde_json::from_str(r#"{"owner":null,"budgets":{"daily_usd":2}}"#).unwrap();
        s.apply(p);
        assert_eq!(s.owner, None);
        assert_eq!(
            s.allowed_models,
            Some(vec!["m".into()]),
            "absent field unchanged"
        );
        assert_eq!(s.budgets.daily_usd, Money::from_usd(2.0));
        assert!(serde_json::from_str::<KeyPatch>(r#"{"secret_hash":"x"}"#).is_err());
    }

    #[test]
    fn a_patch_changes_the_limits_and_budgets_it_names_and_keeps_the_others() {
        let usd = |x| Money::from_usd(x);
        let mut s: KeySettings = serde_json::from_str(
            r#"{"name":"k","limits":{"rpm":100,"rpd":1000,"tpm":100000,"max_concurrent":4},
                "budgets":{"daily_usd":5,"monthly_usd":50,"total_usd":500}}"#,
        )
        .unwrap();
        let p: KeyPatch =
            serde_json::from_str(r#"{"limits":{"rpm":120},"budgets":{"daily_usd":10}}"#).unwrap();
        // As it travels to the key's object.
        let p: KeyPatch = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        s.apply(p);
        let limits = |s: &KeySettings| {
            let l = &s.limits;
            (l.rpm, l.rpd, l.tpm, l.max_concurrent)
        };
        assert_eq!(limits(&s), (Some(120), Some(1000), Some(100_000), Some(4)));
        let b = &s.budgets;
        assert_eq!(
            (b.daily_usd, b.monthly_usd, b.total_usd),
            (usd(10.0), usd(50.0), usd(500.0))
        );
        // `null` lifts the one named, nothing else.
        let p: KeyPatch =
            serde_json::from_str(r#"{"limits":{"rpm":null},"budgets":{"total_usd":null}}"#)
                .unwrap();
        let p: KeyPatch = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        s.apply(p);
        assert_eq!(limits(&s), (None, Some(1000), Some(100_000), Some(4)));
        let b = &s.budgets;
        assert_eq!(
            (b.daily_usd, b.monthly_usd, b.total_usd),
            (usd(10.0), usd(50.0), None)
        );
        assert!(serde_json::from_str::<KeyPatch>(r#"{"limits":{"rps":1}}"#).is_err());
    }

    #[test]
    fn a_name_is_present_and_not_a_novel() {
        assert!(check_name("team-a").is_ok());
        assert!(check_name("  ").is_err());
        assert!(check_name(&"é".repeat(MAX_NAME_CHARS)).is_ok());
        let long = check_name(&"x".repeat(MAX_NAME_CHARS + 1)).unwrap_err();
        assert_eq!(long.status(), 400);
        assert!(long.to_string().contains("at most 256"), "{long}");
    }

    #[test]
    fn view_never_shows_the_hash() {
        let r = KeyRecord {
            id: "abc".into(),
            settings: KeySettings::default(),
            secret_hash: "deadbeef".into(),
            secret_hint: "sk-gw-abc_…1234".into(),
            revoked: false,
            created_ms: 1,
            updated_ms: 1,
        };
        let json = serde_json::to_string(&KeyView::from(&r)).unwrap();
        assert!(!json.contains("deadbeef"), "{json}");
        assert!(json.contains("\"object\":\"gateway.key\""));
    }

    #[test]
    fn trust_settings_need_well_formed_names() {
        assert!(check_trust(Some("phi"), None).is_ok());
        assert!(check_trust(Some("PHI class"), None).is_err());
        let policy = |kind: &str| PiiPolicy {
            mode: crate::config::PiiMode::Redact,
            kinds: Some(vec![kind.to_owned()]),
        };
        assert!(check_trust(None, Some(&policy("email"))).is_ok());
        assert!(check_trust(None, Some(&policy("e mail"))).is_err());
        let patch: KeyPatch =
            serde_json::from_str(r#"{"data_class":"phi","pii":{"mode":"restore"}}"#).unwrap();
        assert_eq!(patch.data_class, Some(Some("phi".to_owned())));
        let cleared: KeyPatch = serde_json::from_str(r#"{"data_class":null,"pii":null}"#).unwrap();
        assert_eq!((cleared.data_class, cleared.pii), (Some(None), Some(None)));
    }
}
