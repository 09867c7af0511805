//! Step 2: read the server's inventory (`rpcutil#inventory`): agents, facts, version and
//! whether it can be upgraded. The helper receives it as a JSON string.

use proto::agents::{InventoryReply, RPCUTIL_AGENT};
use thiserror::Error;

use crate::pipeline::Services;
use crate::rpc::RpcError;

#[derive(Debug, Error)]
pub enum InventoryError {
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error("inventory reply: {0}")]
    Reply(String),
}

pub struct Inventory {
    /// The reply data as JSON text, as the helper gets it.
    pub json: String,
    pub parsed: InventoryReply,
}

pub async fn fetch(svc: &Services, identity: &str) -> Result<Inventory, InventoryError> {
    let reply = svc
        .rpc
        .call_ok(
            identity,
            RPCUTIL_AGENT,
            "inventory",
            &serde_json::json!({}),
            svc.config.rpc_timeout,
            5,
        )
        .await?;
    let parsed: InventoryReply = reply
        .data_as()
        .map_err(|e| InventoryError::Reply(e.to_string()))?;
    let json =
        serde_json::to_string(&reply.data).map_err(|e| InventoryError::Reply(e.to_string()))?;
    Ok(Inventory { json, parsed })
}
