//! Data-class policies: which targets may receive a request's data.
//!
//! A request's classes are the one it names (`x-gateway-data-class`, else
//! `metadata.data_class`) and its key's; each must hold, so a key's class is
//! a floor its callers cannot lower. [`requirement`] turns them into what a
//! target must have (the union of the policies' attributes, the
//! intersection of their jurisdictions); [`retain_eligible`] drops every
//! other candidate, before ordering and failover, exactly as residency
//! does: a classed request never reaches an ineligible target, and when
//! none is left it fails with 403 `data_class_denied` without a call.

use crate::config::Config;
use crate::error::GatewayError;

use super::Candidate;

/// The header a request names its data class in.
pub const CLASS_HEADER: &str = "x-gateway-data-class";

/// What a classed request needs of a target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassRequirement {
    /// The classes, request's first (`phi`, or `phi+internal`).
    pub label: String,
    /// Attributes a target must have (provider's and target's together).
    pub attributes: Vec<String>,
    /// Jurisdictions a target may be in; anywhere when `None`.
    pub jurisdictions: Option<Vec<String>>,
}

/// The requirement of a request naming `requested` (header or metadata)
/// with a key whose class is `key_class`; `None` when neither names one.
/// A class the request names that the config lacks is a 400 naming where
/// it came from; a key's class the config lacks fails closed (403).
pub fn requirement(
    config: &Config,
    requested: Option<(&str, &'static str)>,
    key_class: Option<&str>,
) -> Result<Option<ClassRequirement>, GatewayError> {
    let mut names: Vec<&str> = Vec::with_capacity(2);
    if let Some((name, from)) = requested {
        if !config.data_classes.contains_key(name) {
            return Err(GatewayError::InvalidRequest {
                message: format!(
                    "Unknown data class `{name}`; the gateway knows: {}.",
                    known(config)
                ),
                param: Some(from.to_owned()),
            });
        }
        names.push(name);
    }
    if let Some(name) = key_class {
        if !config.data_classes.contains_key(name) {
            return Err(GatewayError::DataClassDenied {
                message: format!(
                    "This key's data class `{name}` has no policy in the routing config, so no target may receive its requests."
                ),
            });
        }
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if names.is_empty() {
        return Ok(None);
    }
    let mut req = ClassRequirement {
        label: names.join("+"),
        ..ClassRequirement::default()
    };
    for name in names {
        let policy = &config.data_classes[name];
        for a in &policy.require {
            if !req.attributes.contains(a) {
                req.attributes.push(a.clone());
            }
        }
        if let Some(allowed) = &policy.jurisdictions {
            req.jurisdictions = Some(match req.jurisdictions.take() {
                None => allowed.clone(),
                Some(prev) => prev
                    .into_iter()
                    .filter(|j| allowed.iter().any(|a| a.eq_ignore_ascii_case(j)))
                    .collect(),
            });
        }
    }
    Ok(Some(req))
}

fn known(config: &Config) -> String {
    if config.data_classes.is_empty() {
        return "none".to_owned();
    }
    config
        .data_classes
        .keys()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a candidate may receive the class.
pub fn eligible(c: &Candidate<'_>, req: &ClassRequirement) -> bool {
    let has = |a: &String| c.target.provider.attributes.contains(a) || c.attributes.contains(a);
    let in_jurisdiction = req.jurisdictions.as_ref().is_none_or(|allowed| {
        c.target
            .provider
            .jurisdiction
            .as_deref()
            .is_some_and(|j| allowed.iter().any(|a| a.eq_ignore_ascii_case(j)))
    });
    in_jurisdiction && req.attributes.iter().all(has)
}

/// Leaves only the candidates that may receive the class; none left is a
/// 403 naming the class and what it needs.
pub fn retain_eligible(
    list: &mut Vec<Candidate<'_>>,
    req: Option<&ClassRequirement>,
    model: &str,
) -> Result<(), GatewayError> {
    let Some(req) = req else { return Ok(()) };
    list.retain(|c| eligible(c, req));
    if !list.is_empty() {
        return Ok(());
    }
    let mut needs: Vec<String> = req.attributes.clone();
    if let Some(j) = &req.jurisdictions {
        needs.push(format!("jurisdiction {}", j.join(" or ")));
    }
    Err(GatewayError::DataClassDenied {
        message: format!(
            "No target of `{model}` may receive data of class `{}` (it needs: {}).",
            req.label,
            if needs.is_empty() {
                "nothing".to_owned()
            } else {
                needs.join(", ")
            }
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::Target;

    const CONFIG: &str = r#"{"version":1,
      "providers":{
        "hipaa-us":{"kind":"openai","jurisdiction":"us","attributes":["hipaa","zero_data_retention"]},
        "plain":{"kind":"openai","jurisdiction":"us"},
        "eu":{"kind":"openai","jurisdiction":"eu","attributes":["zero_data_retention"]}},
      "models":{"m":{"targets":[{"provider":"plain","model":"x"},{"provider":"hipaa-us","model":"x"},
                               {"provider":"eu","model":"x","attributes":["hipaa"]}]}},
      "data_classes":{"phi":{"require":["hipaa"]},"eu-only":{"jurisdictions":["eu"]},"public":{}}}"#;

    fn names(config: &Config, req: Option<&ClassRequirement>) -> Result<Vec<String>, GatewayError> {
        let model = &config.models["m"];
        let mut list: Vec<Candidate<'_>> = model
            .targets
            .iter()
            .map(|t| Candidate {
                target: Target {
                    name: config.providers.get_key_value(&t.provider).unwrap().0,
                    provider: &config.providers[&t.provider],
                    model: &t.model,
                },
                api_key: None,
                weight: 1,
                attributes: &t.attributes,
            })
            .collect();
        retain_eligible(&mut list, req, "m")?;
        Ok(list.iter().map(|c| c.target.name.to_owned()).collect())
    }

    #[test]
    fn a_class_keeps_only_targets_with_its_attributes() {
        let c = Config::from_json(CONFIG).unwrap();
        let phi = requirement(&c, Some(("phi", CLASS_HEADER)), None).unwrap();
        assert_eq!(names(&c, phi.as_ref()).unwrap(), ["hipaa-us", "eu"]);
        let public = requirement(&c, Some(("public", CLASS_HEADER)), None).unwrap();
        assert_eq!(names(&c, public.as_ref()).unwrap().len(), 3);
        assert_eq!(names(&c, None).unwrap().len(), 3);
    }

    #[test]
    fn a_keys_class_is_a_floor_the_request_cannot_lower() {
        let c = Config::from_json(CONFIG).unwrap();
        let both = requirement(&c, Some(("public", CLASS_HEADER)), Some("phi"))
            .unwrap()
            .unwrap();
        assert_eq!(both.label, "public+phi");
        assert_eq!(names(&c, Some(&both)).unwrap(), ["hipaa-us", "eu"]);
        let strict = requirement(&c, Some(("eu-only", CLASS_HEADER)), Some("phi"))
            .unwrap()
            .unwrap();
        assert_eq!(names(&c, Some(&strict)).unwrap(), ["eu"]);
    }

    #[test]
    fn no_eligible_target_is_403_and_unknown_classes_are_refused() {
        let mut c = Config::from_json(CONFIG).unwrap();
        c.providers.get_mut("eu").unwrap().jurisdiction = Some("uk".into());
        let strict = requirement(&c, Some(("eu-only", CLASS_HEADER)), None).unwrap();
        let e = names(&c, strict.as_ref()).unwrap_err();
        assert_eq!(e.status(), 403);
        assert!(e.to_string().contains("`eu-only`"), "{e}");
        let e = requirement(&c, Some(("phl", "metadata.data_class")), None).unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(e.to_string().contains("`phi`"));
        let e = requirement(&c, None, Some("gone")).unwrap_err();
        assert_eq!(e.status(), 403);
    }
}
