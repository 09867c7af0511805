//! Agent DDLs: the declared interface of an agent (its actions, their inputs with types,
//! optionality, maximum length and validation) and checking of request data against it.
//!
//! The `choria_provision` and `rpcutil` DDLs are upstream's JSON documents, embedded at build
//! time. The provisioner checks what it sends with them (as upstream's generated clients do);
//! the fleet simulator checks what it receives, so a mistake on either side shows up.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Layer, ProtoError};

const CHORIA_PROVISION_DDL: &str = include_str!("../ddl/choria_provision.json");
const RPCUTIL_DDL: &str = include_str!("../ddl/rpcutil.json");

#[derive(Debug, Deserialize)]
pub struct Metadata {
    pub name: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub timeout: u64,
}

#[derive(Debug, Deserialize)]
pub struct Input {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub optional: bool,
    #[serde(default)]
    pub validation: Option<String>,
    #[serde(default)]
    pub maxlength: usize,
    #[serde(skip)]
    pattern: Option<Regex>,
}

#[derive(Debug, Deserialize)]
pub struct Action {
    pub action: String,
    #[serde(default)]
    pub input: BTreeMap<String, Input>,
    #[serde(default)]
    pub output: BTreeMap<String, Value>,
}

#[derive(Debug, Deserialize)]
pub struct Ddl {
    pub metadata: Metadata,
    pub actions: Vec<Action>,
}

/// The embedded `choria_provision` DDL.
pub fn choria_provision() -> &'static Ddl {
    static DDL: OnceLock<Ddl> = OnceLock::new();
    DDL.get_or_init(|| embedded(CHORIA_PROVISION_DDL))
}

/// The embedded `rpcutil` DDL.
pub fn rpcutil() -> &'static Ddl {
    static DDL: OnceLock<Ddl> = OnceLock::new();
    DDL.get_or_init(|| embedded(RPCUTIL_DDL))
}

/// Looks up an embedded DDL by agent name.
pub fn for_agent(agent: &str) -> Option<&'static Ddl> {
    match agent {
        "choria_provision" => Some(choria_provision()),
        "rpcutil" => Some(rpcutil()),
        _ => None,
    }
}

fn embedded(text: &str) -> Ddl {
    // The embedded documents are part of this crate and covered by tests; a failure here is a
    // build defect, not bad input.
    #[allow(clippy::expect_used)]
    Ddl::from_json(text.as_bytes()).expect("embedded DDL is valid")
}

impl Ddl {
    pub fn from_json(data: &[u8]) -> Result<Self, ProtoError> {
        let mut ddl: Ddl = serde_json::from_slice(data).map_err(|source| ProtoError::Json {
            layer: Layer::Ddl,
            source,
        })?;
        for action in &mut ddl.actions {
            for (name, input) in &mut action.input {
                if let Some(v) = &input.validation {
                    if !is_named_validator(v) {
                        input.pattern =
                            Some(go_regex(v).map_err(|e| ProtoError::InvalidInput {
                                input: name.clone(),
                                reason: format!("bad validation pattern {v:?}: {e}"),
                            })?);
                    }
                }
            }
        }
        Ok(ddl)
    }

    pub fn action(&self, name: &str) -> Option<&Action> {
        self.actions.iter().find(|a| a.action == name)
    }

    /// Checks request `data` for `action` the way upstream's DDL validation does: required
    /// inputs present, no undeclared inputs, types, maximum lengths and validations.
    /// An empty string is taken as "not given": it satisfies presence but skips the value
    /// checks, because upstream's clients send `"token": ""` when no token is configured.
    pub fn validate(&self, action: &str, data: &Value) -> Result<(), ProtoError> {
        let act = self
            .action(action)
            .ok_or_else(|| ProtoError::UnknownAction {
                agent: self.metadata.name.clone(),
                action: action.to_string(),
            })?;
        let empty = serde_json::Map::new();
        let map = match data {
            Value::Object(m) => m,
            Value::Null => &empty,
            _ => {
                return Err(ProtoError::InvalidInput {
                    input: "data".into(),
                    reason: "must be an object".into(),
                })
            }
        };
        for key in map.keys() {
            if !act.input.contains_key(key) && key != "process_results" {
                return Err(ProtoError::InvalidInput {
                    input: key.clone(),
                    reason: format!("not declared for {}#{}", self.metadata.name, action),
                });
            }
        }
        for (name, input) in &act.input {
            let value = map.get(name);
            let v = match value {
                None | Some(Value::Null) if input.optional => continue,
                None | Some(Value::Null) => return Err(ProtoError::MissingInput(name.clone())),
                Some(Value::String(s)) if s.is_empty() => continue,
                Some(v) => v,
            };
            {
                input.check(v).map_err(|reason| ProtoError::InvalidInput {
                    input: name.clone(),
                    reason,
                })?;
            }
        }
        Ok(())
    }
}

impl Input {
    fn check(&self, v: &Value) -> Result<(), String> {
        match self.kind.to_ascii_lowercase().as_str() {
            "string" => {
                let s = v.as_str().ok_or("is not a string")?;
                if self.maxlength > 0 && s.len() > self.maxlength {
                    return Err(format!("is longer than {} characters", self.maxlength));
                }
                if let Some(name) = self.validation.as_deref().filter(|v| is_named_validator(v)) {
                    return named_validator(name, s);
                }
                if let Some(re) = &self.pattern {
                    if !re.is_match(s) {
                        return Err(format!(
                            "does not match validation {:?}",
                            self.validation.as_deref().unwrap_or_default()
                        ));
                    }
                }
                Ok(())
            }
            "integer" | "int" => match v {
                Value::Number(n) if n.is_i64() || n.is_u64() => Ok(()),
                Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => Ok(()),
                _ => Err("is not an integer".into()),
            },
            "number" | "float" => v.as_f64().map(|_| ()).ok_or("is not a number".into()),
            "boolean" | "bool" => v.as_bool().map(|_| ()).ok_or("is not a boolean".into()),
            "hash" => v.as_object().map(|_| ()).ok_or("is not a hash".into()),
            "array" | "list" => v.as_array().map(|_| ()).ok_or("is not an array".into()),
            other => Err(format!("unknown input type {other}")),
        }
    }
}

fn is_named_validator(v: &str) -> bool {
    matches!(
        v,
        "shellsafe" | "ipv4address" | "ipv6address" | "ipaddress" | "bool" | "boolean"
    )
}

fn named_validator(name: &str, s: &str) -> Result<(), String> {
    let ok = match name {
        "shellsafe" => !s.chars().any(|c| "`$;|&><".contains(c)),
        "ipv4address" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6address" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "ipaddress" => s.parse::<std::net::IpAddr>().is_ok(),
        _ => matches!(s, "true" | "false"),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("is not valid for {name}"))
    }
}

/// Compiles a DDL validation written for Go's RE2. RE2 reads a `{` that does not start a
/// repetition as a literal (upstream's `^{.+}$`); Rust's regex does not, so on failure the
/// braces are escaped and compiled again.
fn go_regex(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(pattern).or_else(|_| Regex::new(&pattern.replace('{', r"\{").replace('}', r"\}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn embedded_ddls_load() {
        let p = choria_provision();
        assert_eq!(p.metadata.name, "choria_provision");
        for a in [
            "configure",
            "gen25519",
            "gencsr",
            "jwt",
            "reprovision",
            "restart",
            "release_update",
            "shutdown",
        ] {
            assert!(p.action(a).is_some(), "{a}");
        }
        assert!(rpcutil().action("inventory").is_some());
    }

    #[test]
    fn configure_inputs_are_checked() {
        let p = choria_provision();
        p.validate(
            "configure",
            &json!({"token": "t", "config": "{\"a\":\"b\"}"}),
        )
        .unwrap();
        // config must look like a JSON object
        assert!(p.validate("configure", &json!({"config": "a=b"})).is_err());
        // config is required
        assert!(matches!(
            p.validate("configure", &json!({"token": "t"})),
            Err(ProtoError::MissingInput(_))
        ));
        // certificate must be PEM when given; empty counts as absent
        assert!(p
            .validate(
                "configure",
                &json!({"config": "{}x", "certificate": "nope"})
            )
            .is_err());
        p.validate(
            "configure",
            &json!({"config": "{\"a\":1}", "certificate": ""}),
        )
        .unwrap();
        // undeclared inputs are refused
        assert!(p
            .validate("configure", &json!({"config": "{\"a\":1}", "bogus": 1}))
            .is_err());
    }

    #[test]
    fn lengths_types_and_patterns() {
        let p = choria_provision();
        let long = "x".repeat(129);
        assert!(p.validate("jwt", &json!({ "token": long })).is_err());
        assert!(p
            .validate("restart", &json!({"token": "t", "splay": "x"}))
            .is_err());
        p.validate("restart", &json!({"token": "t", "splay": 1}))
            .unwrap();
        assert!(p
            .validate("gencsr", &json!({"token": "t", "cn": "bad name!"}))
            .is_err());
        p.validate("gencsr", &json!({"token": "t", "cn": "n1.example.net"}))
            .unwrap();
        assert!(p
            .validate(
                "release_update",
                &json!({"token": "t", "repository": "ftp://x", "version": "1"})
            )
            .is_err());
        assert!(matches!(
            p.validate("nosuch", &json!({})),
            Err(ProtoError::UnknownAction { .. })
        ));
        rpcutil().validate("inventory", &json!({})).unwrap();
    }
}
