//! The `features` section and what each feature asks of the rest of the file: pki and ed25519
//! exclude each other, ed25519 implies jwt and needs a signing key, jwt needs a verification
//! key, and upgrades need a repository unless they are optional.

use serde::Deserialize;

use super::raw::RawConfig;
use super::{invalid, Problems};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Features {
    #[serde(default)]
    pub pki: bool,
    #[serde(default)]
    pub jwt: bool,
    #[serde(default)]
    pub ed25519: bool,
    #[serde(default)]
    pub upgrades: bool,
}

/// The features in force (ed25519 turns jwt on), with the keys they need checked.
pub(super) fn check_features(raw: &RawConfig, p: &mut Problems) -> Features {
    let mut features = raw.features.clone();
    if features.pki && features.ed25519 {
        p.add(invalid(
            "features",
            "only one of pki or ed25519 can be enabled",
        ));
    }
    if features.ed25519 {
        features.jwt = true;
        if raw.jwt_signing_key.is_empty() {
            p.add(invalid(
                "jwt_signing_key",
                "is required with the ed25519 feature (the hex seed of the Organization Issuer, or of the chain issuer named by jwt_signing_token)",
            ));
        }
    }
    if features.jwt && raw.jwt_verify_cert.is_empty() {
        p.add(invalid(
            "jwt_verify_cert",
            "is required when the jwt feature is enabled",
        ));
    }
    features
}

/// Upgrades that are not optional need somewhere to come from.
pub(super) fn check_upgrades(raw: &RawConfig, features: &Features, p: &mut Problems) {
    if features.upgrades && raw.upgrades_repository.is_empty() && !raw.upgrades_optional {
        p.add(invalid(
            "upgrades_repository",
            "is required when the upgrades feature is on and upgrades are not optional",
        ));
    }
}
