//! AWS regions: where each is and which jurisdiction its data stays in, so a
//! Bedrock provider with `region: eu-central-1` is an `eu` deployment in
//! Frankfurt without the config saying so; and the geography of Bedrock's
//! cross-region inference profiles.
//!
//! Jurisdictions are the labels residency rules name: `eu` for the EU member
//! states' regions, `us` for the United States (GovCloud included), and a
//! lower-case country code elsewhere (`uk`, `ch`, `jp`, ...). Coordinates are
//! the city AWS names the region after (or its metro area): good to tens of
//! kilometres, which is what nearest-first ordering needs.

use crate::config::Location;

/// One AWS region.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Region {
    /// The region code (`eu-central-1`).
    pub code: &'static str,
    /// The jurisdiction its data stays in.
    pub jurisdiction: &'static str,
    /// The city it is named after.
    pub city: &'static str,
    /// Approximately where it is.
    pub location: Location,
}

const fn r(
    code: &'static str,
    jurisdiction: &'static str,
    city: &'static str,
    lat: f64,
    lon: f64,
) -> Region {
    Region {
        code,
        jurisdiction,
        city,
        location: Location { lat, lon },
    }
}

/// The commercial and GovCloud regions (China's are a separate partition
/// with other endpoints, and are not listed).
pub const REGIONS: &[Region] = &[
    r("us-east-1", "us", "N. Virginia", 38.9, -77.4),
    r("us-east-2", "us", "Ohio", 40.0, -83.0),
    r("us-west-1", "us", "N. California", 37.4, -121.9),
    r("us-west-2", "us", "Oregon", 45.8, -119.7),
    r("us-gov-east-1", "us", "Ohio (GovCloud)", 40.0, -83.0),
    r("us-gov-west-1", "us", "Oregon (GovCloud)", 45.8, -119.7),
    r("ca-central-1", "ca", "Montreal", 45.5, -73.6),
    r("ca-west-1", "ca", "Calgary", 51.0, -114.1),
    r("mx-central-1", "mx", "Querétaro", 20.6, -100.4),
    r("sa-east-1", "br", "São Paulo", -23.5, -46.6),
    r("eu-central-1", "eu", "Frankfurt", 50.11, 8.68),
    r("eu-central-2", "ch", "Zurich", 47.37, 8.54),
    r("eu-west-1", "eu", "Dublin", 53.35, -6.26),
    r("eu-west-2", "uk", "London", 51.51, -0.13),
    r("eu-west-3", "eu", "Paris", 48.86, 2.35),
    r("eu-north-1", "eu", "Stockholm", 59.33, 18.07),
    r("eu-south-1", "eu", "Milan", 45.46, 9.19),
    r("eu-south-2", "eu", "Aragón", 41.65, -0.88),
    r("il-central-1", "il", "Tel Aviv", 32.09, 34.78),
    r("me-central-1", "ae", "UAE", 25.2, 55.27),
    r("me-south-1", "bh", "Bahrain", 26.07, 50.56),
    r("af-south-1", "za", "Cape Town", -33.92, 18.42),
    r("ap-south-1", "in", "Mumbai", 19.08, 72.88),
    r("ap-south-2", "in", "Hyderabad", 17.39, 78.49),
    r("ap-east-1", "hk", "Hong Kong", 22.32, 114.17),
    r("ap-east-2", "tw", "Taipei", 25.03, 121.57),
    r("ap-northeast-1", "jp", "Tokyo", 35.68, 139.69),
    r("ap-northeast-2", "kr", "Seoul", 37.57, 126.98),
    r("ap-northeast-3", "jp", "Osaka", 34.69, 135.5),
    r("ap-southeast-1", "sg", "Singapore", 1.35, 103.82),
    r("ap-southeast-2", "au", "Sydney", -33.87, 151.21),
    r("ap-southeast-3", "id", "Jakarta", -6.21, 106.85),
    r("ap-southeast-4", "au", "Melbourne", -37.81, 144.96),
    r("ap-southeast-5", "my", "Kuala Lumpur", 3.15, 101.69),
    r("ap-southeast-7", "th", "Bangkok", 13.76, 100.5),
];

/// A region by code.
pub fn region(code: &str) -> Option<&'static Region> {
    REGIONS.iter().find(|r| r.code == code)
}

/// Whether `code` can be a region code in a host name: lower-case letters,
/// digits and inner hyphens (`eu-central-1`). Unknown but well-formed codes
/// are allowed: AWS opens regions faster than this table is updated.
pub fn is_region_code(code: &str) -> bool {
    !code.is_empty()
        && !code.starts_with('-')
        && !code.ends_with('-')
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The geography prefixes of Bedrock's cross-region (system-defined)
/// inference profiles, with the jurisdiction a deployment serving one must
/// have: a profile routes each request to any region of its geography, so
/// it is only as resident as that whole geography.
const PROFILE_GEOGRAPHIES: &[(&str, &str)] = &[
    ("us", "us"),
    ("us-gov", "us"),
    ("eu", "eu"),
    ("apac", "apac"),
    ("jp", "jp"),
    ("au", "au"),
    ("ca", "ca"),
    ("global", "global"),
];

/// For a model id or ARN naming a cross-region inference profile
/// (`eu.anthropic.claude-...`, `arn:...:inference-profile/global.amazon...`),
/// the jurisdiction its geography is: `Some("eu")`, `Some("global")`. `None`
/// for a plain model id or an application profile, whose ARN does not say.
pub fn inference_profile_jurisdiction(model_id: &str) -> Option<&'static str> {
    let id = model_id.rsplit('/').next().unwrap_or(model_id);
    let (prefix, _) = id.split_once('.')?;
    PROFILE_GEOGRAPHIES
        .iter()
        .find(|(p, _)| *p == prefix)
        .map(|(_, j)| *j)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_unique_well_formed_and_on_earth() {
        for (i, r) in REGIONS.iter().enumerate() {
            assert!(is_region_code(r.code), "{}", r.code);
            assert!(
                REGIONS[..i].iter().all(|o| o.code != r.code),
                "{} twice",
                r.code
            );
            assert!(r.location.lat.abs() <= 90.0 && r.location.lon.abs() <= 180.0);
        }
        let fra = region("eu-central-1").unwrap();
        assert_eq!((fra.jurisdiction, fra.city), ("eu", "Frankfurt"));
        assert_eq!(region("eu-west-2").unwrap().jurisdiction, "uk");
        assert!(region("mars-north-1").is_none());
        assert!(is_region_code("mars-north-1"));
        for bad in ["", "EU-central-1", "eu central", "-eu", "eu.x", "x/y"] {
            assert!(!is_region_code(bad), "{bad}");
        }
    }

    #[test]
    fn inference_profiles_are_told_by_their_prefix() {
        let j = inference_profile_jurisdiction;
        assert_eq!(
            j("eu.anthropic.claude-3-7-sonnet-20250219-v1:0"),
            Some("eu")
        );
        assert_eq!(
            j("us-gov.anthropic.claude-3-5-sonnet-20240620-v1:0"),
            Some("us")
        );
        assert_eq!(
            j("global.anthropic.claude-sonnet-4-5-20250929-v1:0"),
            Some("global")
        );
        assert_eq!(j("apac.amazon.nova-pro-v1:0"), Some("apac"));
        assert_eq!(
            j(
                "arn:aws:bedrock:eu-west-1:123456789012:inference-profile/eu.meta.llama3-2-3b-instruct-v1:0"
            ),
            Some("eu")
        );
        assert_eq!(j("anthropic.claude-3-haiku-20240307-v1:0"), None);
        assert_eq!(j("amazon.nova-lite-v1:0"), None);
        assert_eq!(
            j("arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3"),
            None
        );
    }
}
