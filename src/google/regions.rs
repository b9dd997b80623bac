//! Vertex AI locations: the endpoint host of each, and the jurisdiction
//! and coordinates a deployment there gets by default, so a `vertex`
//! provider with `region: europe-west4` is an `eu` deployment in the
//! Netherlands without the config saying so.
//!
//! Three kinds of location, three kinds of host:
//!
//! - a region (`europe-west4`): `https://europe-west4-aiplatform.googleapis.com`,
//!   processing in that region;
//! - a multi-region (`eu`, `us`): `https://aiplatform.eu.rep.googleapis.com`,
//!   processing anywhere within that jurisdiction (Google's "regional
//!   endpoint" hosts, the ones with a residency commitment);
//! - `global`: `https://aiplatform.googleapis.com`, processing anywhere —
//!   no jurisdiction, so residency rules never send a constrained request
//!   there.
//!
//! Jurisdictions are the labels residency rules name, as for AWS (`eu`,
//! `us`, `uk`, `ch`, a lower-case country code elsewhere). Coordinates are
//! the region's city, good to tens of kilometres; a multi-region's are
//! roughly its centre.

use crate::config::Location;

/// One Vertex AI location.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Region {
    /// The location id (`europe-west4`, `eu`).
    pub code: &'static str,
    /// The jurisdiction its processing stays in.
    pub jurisdiction: &'static str,
    /// Where it is, in words.
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

/// The locations generative AI on Vertex is offered in (`global` is not
/// listed: it has no jurisdiction and no place).
pub const REGIONS: &[Region] = &[
    r("eu", "eu", "EU multi-region", 50.0, 8.0),
    r("us", "us", "US multi-region", 39.0, -95.0),
    r("us-central1", "us", "Iowa", 41.26, -95.86),
    r("us-east1", "us", "South Carolina", 33.2, -80.01),
    r("us-east4", "us", "N. Virginia", 39.04, -77.49),
    r("us-east5", "us", "Columbus", 39.96, -83.0),
    r("us-south1", "us", "Dallas", 32.78, -96.8),
    r("us-west1", "us", "Oregon", 45.6, -121.18),
    r("us-west4", "us", "Las Vegas", 36.17, -115.14),
    r("northamerica-northeast1", "ca", "Montréal", 45.5, -73.57),
    r("southamerica-east1", "br", "São Paulo", -23.55, -46.63),
    r("europe-west1", "eu", "Belgium", 50.45, 3.82),
    r("europe-west2", "uk", "London", 51.51, -0.13),
    r("europe-west3", "eu", "Frankfurt", 50.11, 8.68),
    r("europe-west4", "eu", "Netherlands", 53.44, 6.83),
    r("europe-west6", "ch", "Zürich", 47.37, 8.54),
    r("europe-west8", "eu", "Milan", 45.46, 9.19),
    r("europe-west9", "eu", "Paris", 48.86, 2.35),
    r("europe-north1", "eu", "Finland", 60.57, 27.2),
    r("europe-central2", "eu", "Warsaw", 52.23, 21.01),
    r("europe-southwest1", "eu", "Madrid", 40.42, -3.7),
    r("me-west1", "il", "Tel Aviv", 32.09, 34.78),
    r("me-central2", "sa", "Dammam", 26.43, 50.1),
    r("asia-east1", "tw", "Taiwan", 24.07, 120.54),
    r("asia-east2", "hk", "Hong Kong", 22.32, 114.17),
    r("asia-northeast1", "jp", "Tokyo", 35.68, 139.69),
    r("asia-northeast3", "kr", "Seoul", 37.57, 126.98),
    r("asia-south1", "in", "Mumbai", 19.08, 72.88),
    r("asia-southeast1", "sg", "Singapore", 1.35, 103.82),
    r("australia-southeast1", "au", "Sydney", -33.87, 151.21),
];

/// The location that processes anywhere.
pub const GLOBAL: &str = "global";

/// A location by id.
pub fn region(code: &str) -> Option<&'static Region> {
    REGIONS.iter().find(|r| r.code == code)
}

/// Whether `code` can be a location id in a host name: lower-case letters,
/// digits and inner hyphens. Unknown but well-formed ids are allowed (new
/// regions open faster than this table changes).
pub fn is_location_code(code: &str) -> bool {
    !code.is_empty()
        && !code.starts_with('-')
        && !code.ends_with('-')
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The API host serving a location, with its scheme.
pub fn endpoint(code: &str) -> String {
    match code {
        GLOBAL => "https://aiplatform.googleapis.com".to_owned(),
        "eu" | "us" => format!("https://aiplatform.{code}.rep.googleapis.com"),
        region => format!("https://{region}-aiplatform.googleapis.com"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_unique_well_formed_and_on_earth() {
        for (i, r) in REGIONS.iter().enumerate() {
            assert!(is_location_code(r.code), "{}", r.code);
            assert!(
                REGIONS[..i].iter().all(|o| o.code != r.code),
                "{} twice",
                r.code
            );
            assert!(r.location.lat.abs() <= 90.0 && r.location.lon.abs() <= 180.0);
        }
        assert_eq!(region("europe-west4").unwrap().jurisdiction, "eu");
        assert_eq!(region("europe-west2").unwrap().jurisdiction, "uk");
        assert_eq!(region("eu").unwrap().jurisdiction, "eu");
        assert!(region(GLOBAL).is_none(), "global has no jurisdiction");
        for bad in ["", "Europe-west4", "europe west4", "-eu", "x/y", "a.b"] {
            assert!(!is_location_code(bad), "{bad}");
        }
    }

    #[test]
    fn each_kind_of_location_has_its_host() {
        assert_eq!(
            endpoint("europe-west4"),
            "https://europe-west4-aiplatform.googleapis.com"
        );
        assert_eq!(endpoint("eu"), "https://aiplatform.eu.rep.googleapis.com");
        assert_eq!(endpoint("us"), "https://aiplatform.us.rep.googleapis.com");
        assert_eq!(endpoint("global"), "https://aiplatform.googleapis.com");
    }
}
