//! Typed inputs and outputs of the agent actions the provisioner calls: `choria_provision`
//! (jwt, gencsr, gen25519, configure, restart, reprovision, release_update, shutdown) and
//! `rpcutil#inventory`. Field names are the DDLs'; the serde shapes are what goes in the RPC
//! body's `data`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const PROVISION_AGENT: &str = "choria_provision";
pub const RPCUTIL_AGENT: &str = "rpcutil";
pub const DISCOVERY_AGENT: &str = "discovery";

fn is_empty(s: &str) -> bool {
    s.is_empty()
}

/// Input of actions that take only the provisioning token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenRequest {
    #[serde(default)]
    pub token: String,
}

/// `choria_provision#jwt` output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JwtReply {
    #[serde(default)]
    pub jwt: String,
    #[serde(default)]
    pub ecdh_public: String,
}

/// `choria_provision#gencsr` input.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CsrRequest {
    #[serde(default)]
    pub token: String,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub cn: String,
    #[serde(rename = "C", default, skip_serializing_if = "is_empty")]
    pub country: String,
    #[serde(rename = "L", default, skip_serializing_if = "is_empty")]
    pub locality: String,
    #[serde(rename = "O", default, skip_serializing_if = "is_empty")]
    pub organization: String,
    #[serde(rename = "OU", default, skip_serializing_if = "is_empty")]
    pub organizational_unit: String,
    #[serde(rename = "ST", default, skip_serializing_if = "is_empty")]
    pub state: String,
}

/// `choria_provision#gencsr` output; also handed to the helper as `csr`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CsrReply {
    #[serde(default)]
    pub csr: String,
    #[serde(default)]
    pub public_key: String,
    #[serde(default)]
    pub ssldir: String,
}

/// `choria_provision#gen25519` input.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ed25519Request {
    #[serde(default)]
    pub token: String,
    pub nonce: String,
}

/// `choria_provision#gen25519` output; also handed to the helper as `ed25519_pubkey`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ed25519Reply {
    #[serde(default)]
    pub public_key: String,
    #[serde(default)]
    pub directory: String,
    #[serde(default)]
    pub signature: String,
}

/// `choria_provision#configure` input. Empty optional fields are left out of the request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigureRequest {
    #[serde(default)]
    pub token: String,
    /// The server configuration as a JSON object of strings, encoded to a string.
    pub config: String,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub certificate: String,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub ca: String,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub ssldir: String,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub key: String,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub ecdh_public: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub action_policies: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub opa_policies: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub server_jwt: String,
}

/// `choria_provision#restart` input.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RestartRequest {
    #[serde(default)]
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub splay: Option<u64>,
}

/// `choria_provision#release_update` input.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReleaseUpdateRequest {
    #[serde(default)]
    pub token: String,
    pub repository: String,
    pub version: String,
}

/// Output of configure, restart, reprovision, release_update and shutdown.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MessageReply {
    #[serde(default)]
    pub message: String,
}

/// `rpcutil#ping` output: the server's clock (Unix seconds).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PingReply {
    #[serde(default)]
    pub pong: i64,
}

/// `rpcutil#inventory` output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InventoryReply {
    #[serde(default)]
    pub agents: Vec<String>,
    #[serde(default)]
    pub facts: Value,
    #[serde(default)]
    pub classes: Vec<String>,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub main_collective: String,
    #[serde(default)]
    pub collectives: Vec<String>,
    #[serde(default)]
    pub data_plugins: Vec<String>,
    #[serde(default)]
    pub machines: Value,
    #[serde(default)]
    pub upgradable: bool,
}
