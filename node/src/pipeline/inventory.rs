//! Step 3: read the server's inventory (`rpcutil#inventory`): agents, facts, version and
//! whether it can be upgraded. The helper receives it as a JSON string, as it came.

use proto::action::Inventory as InventoryAction;
use proto::agents::InventoryReply;
use thiserror::Error;

use crate::call::Agents;
use crate::rpc::RpcError;

#[derive(Debug, Error)]
pub enum InventoryError {
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error("inventory reply: {0}")]
    Encode(#[source] serde_json::Error),
}

pub struct Inventory {
    /// The reply data as JSON text, as the helper gets it.
    pub json: String,
    pub parsed: InventoryReply,
}

pub async fn fetch(agents: &Agents, identity: &str) -> Result<Inventory, InventoryError> {
    let (parsed, data) = agents
        .call_with_data::<InventoryAction>(identity, &serde_json::json!({}))
        .await?;
    let json = serde_json::to_string(&data).map_err(InventoryError::Encode)?;
    Ok(Inventory { json, parsed })
}
