//! Where a request comes from, how far that is from a deployment, and which
//! jurisdictions may serve it.

use crate::config::{Location, Residency};

/// The caller's location, as far as the edge knows it. Every field may be
/// missing (requests built in code, some test harnesses).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Origin {
    /// The Cloudflare data centre (IATA code).
    pub colo: Option<String>,
    /// ISO 3166-1 alpha-2 country.
    pub country: Option<String>,
    /// Continent code (`EU`, `NA`, ...).
    pub continent: Option<String>,
    /// The country is an EU member state.
    pub is_eu: bool,
    /// Approximate coordinates.
    pub location: Option<Location>,
}

/// Mean Earth radius.
const EARTH_RADIUS_KM: f64 = 6371.0;

/// Great-circle distance (haversine).
pub fn distance_km(a: Location, b: Location) -> f64 {
    let (lat1, lat2) = (a.lat.to_radians(), b.lat.to_radians());
    let dlat = lat2 - lat1;
    let dlon = (b.lon - a.lon).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// Round-trip milliseconds light in fibre needs for a distance (about
/// 200 km per ms each way), the distance term of nearest-first ordering.
pub fn distance_ms(km: f64) -> f64 {
    km / 100.0
}

/// Half the Earth's circumference: the farthest two points can be.
const FARTHEST_KM: f64 = 20_000.0;

/// The network distance from a caller to a deployment, in round-trip ms:
/// a deployment of unknown location counts as far as can be; a caller of
/// unknown location is equally near to all (the config's order decides).
pub fn network_ms(origin: &Origin, at: Option<Location>) -> f64 {
    match (origin.location, at) {
        (Some(a), Some(b)) => distance_ms(distance_km(a, b)),
        (Some(_), None) => distance_ms(FARTHEST_KM),
        (None, _) => 0.0,
    }
}

/// The jurisdictions the residency rules allow for this origin; `None` when
/// no rule covers it. Several covering rules intersect (each must hold).
pub fn allowed_jurisdictions(rules: &[Residency], origin: &Origin) -> Option<Vec<String>> {
    let mut allowed: Option<Vec<String>> = None;
    for rule in rules {
        let o = &rule.origin;
        let eq = |want: &String, have: &Option<String>| {
            have.as_deref()
                .is_some_and(|h| h.eq_ignore_ascii_case(want))
        };
        let covered = (o.eu && origin.is_eu)
            || o.countries.iter().any(|c| eq(c, &origin.country))
            || o.continents.iter().any(|c| eq(c, &origin.continent));
        if covered {
            allowed = Some(match allowed {
                None => rule.jurisdictions.clone(),
                Some(prev) => prev
                    .into_iter()
                    .filter(|j| rule.jurisdictions.iter().any(|r| r.eq_ignore_ascii_case(j)))
                    .collect(),
            });
        }
    }
    allowed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OriginMatch;

    const FRANKFURT: Location = Location {
        lat: 50.11,
        lon: 8.68,
    };
    const VIRGINIA: Location = Location {
        lat: 38.9,
        lon: -77.4,
    };
    const AMSTERDAM: Location = Location {
        lat: 52.37,
        lon: 4.9,
    };

    #[test]
    fn distances_are_great_circle() {
        let d = distance_km(FRANKFURT, VIRGINIA);
        assert!((6_500.0..6_700.0).contains(&d), "{d}");
        let d = distance_km(FRANKFURT, AMSTERDAM);
        assert!((350.0..370.0).contains(&d), "{d}");
        assert_eq!(distance_km(FRANKFURT, FRANKFURT), 0.0);
    }

    fn rule(origin: OriginMatch, j: &[&str]) -> Residency {
        Residency {
            origin,
            jurisdictions: j.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn residency_rules_cover_origins_and_intersect() {
        let rules = [
            rule(
                OriginMatch {
                    eu: true,
                    ..OriginMatch::default()
                },
                &["eu", "ch"],
            ),
            rule(
                OriginMatch {
                    countries: vec!["DE".into()],
                    ..OriginMatch::default()
                },
                &["eu"],
            ),
        ];
        let de = Origin {
            country: Some("DE".into()),
            is_eu: true,
            ..Origin::default()
        };
        assert_eq!(
            allowed_jurisdictions(&rules, &de),
            Some(vec!["eu".to_owned()])
        );
        let fr = Origin {
            country: Some("FR".into()),
            is_eu: true,
            ..Origin::default()
        };
        assert_eq!(
            allowed_jurisdictions(&rules, &fr),
            Some(vec!["eu".to_owned(), "ch".to_owned()])
        );
        let us = Origin {
            country: Some("US".into()),
            ..Origin::default()
        };
        assert_eq!(allowed_jurisdictions(&rules, &us), None);
        assert_eq!(allowed_jurisdictions(&rules, &Origin::default()), None);
    }
}
