//! Azure regions: where each is and which jurisdiction its data stays in,
//! so an `azure` provider with `region: swedencentral` is an `eu`
//! deployment in Sweden without the config saying so.
//!
//! This is the deployment's region, what a Standard or Provisioned
//! (regional) Azure OpenAI deployment processes in. A Global deployment
//! processes anywhere, and a Data Zone deployment anywhere in its zone:
//! give such a provider the `jurisdiction` it really has (`global`, or `eu`
//! for an EU Data Zone), which wins over the preset. Jurisdictions are the
//! labels residency rules name, as for AWS and Google; coordinates are the
//! region's city, good to tens of kilometres.

use crate::config::Location;

/// One Azure region.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Region {
    /// The region's name (`swedencentral`).
    pub code: &'static str,
    /// The jurisdiction its data stays in.
    pub jurisdiction: &'static str,
    /// Where it is.
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

/// The regions Azure OpenAI is offered in (and their neighbours).
pub const REGIONS: &[Region] = &[
    r("eastus", "us", "Virginia", 36.67, -78.39),
    r("eastus2", "us", "Virginia", 36.67, -78.39),
    r("centralus", "us", "Iowa", 41.59, -93.6),
    r("northcentralus", "us", "Illinois", 41.88, -87.63),
    r("southcentralus", "us", "Texas", 29.42, -98.49),
    r("westus", "us", "California", 37.78, -122.42),
    r("westus2", "us", "Washington", 47.23, -119.85),
    r("westus3", "us", "Arizona", 33.45, -112.07),
    r("canadaeast", "ca", "Quebec City", 46.82, -71.22),
    r("canadacentral", "ca", "Toronto", 43.65, -79.38),
    r("brazilsouth", "br", "São Paulo", -23.55, -46.63),
    r("swedencentral", "eu", "Gävle", 60.67, 17.14),
    r("westeurope", "eu", "Netherlands", 52.37, 4.9),
    r("northeurope", "eu", "Ireland", 53.35, -6.26),
    r("francecentral", "eu", "Paris", 48.86, 2.35),
    r("germanywestcentral", "eu", "Frankfurt", 50.11, 8.68),
    r("italynorth", "eu", "Milan", 45.46, 9.19),
    r("polandcentral", "eu", "Warsaw", 52.23, 21.01),
    r("spaincentral", "eu", "Madrid", 40.42, -3.7),
    r("norwayeast", "no", "Oslo", 59.91, 10.75),
    r("switzerlandnorth", "ch", "Zürich", 47.37, 8.54),
    r("switzerlandwest", "ch", "Geneva", 46.2, 6.14),
    r("uksouth", "uk", "London", 51.51, -0.13),
    r("ukwest", "uk", "Cardiff", 51.48, -3.18),
    r("uaenorth", "ae", "Dubai", 25.2, 55.27),
    r("southafricanorth", "za", "Johannesburg", -26.2, 28.05),
    r("centralindia", "in", "Pune", 18.52, 73.86),
    r("southindia", "in", "Chennai", 13.08, 80.27),
    r("japaneast", "jp", "Tokyo", 35.68, 139.69),
    r("japanwest", "jp", "Osaka", 34.69, 135.5),
    r("koreacentral", "kr", "Seoul", 37.57, 126.98),
    r("southeastasia", "sg", "Singapore", 1.35, 103.82),
    r("eastasia", "hk", "Hong Kong", 22.32, 114.17),
    r("australiaeast", "au", "Sydney", -33.87, 151.21),
];

/// A region by name.
pub fn region(code: &str) -> Option<&'static Region> {
    REGIONS.iter().find(|r| r.code == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_unique_and_on_earth() {
        for (i, r) in REGIONS.iter().enumerate() {
            assert!(
                REGIONS[..i].iter().all(|o| o.code != r.code),
                "{} twice",
                r.code
            );
            assert!(
                r.code
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            );
            assert!(r.location.lat.abs() <= 90.0 && r.location.lon.abs() <= 180.0);
        }
        assert_eq!(region("swedencentral").unwrap().jurisdiction, "eu");
        assert_eq!(region("uksouth").unwrap().jurisdiction, "uk");
        assert!(region("mars").is_none());
    }
}
