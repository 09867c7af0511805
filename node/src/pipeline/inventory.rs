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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::call::tests::{agents, timeout, Scripted};

    #[tokio::test(start_paused = true)]
    async fn the_helper_gets_the_reply_as_it_came_and_the_pipeline_its_typed_form() {
        let t = Arc::new(Scripted::default());
        t.answer(Err(timeout())).ok(serde_json::json!({
            "version": "0.29.4",
            "upgradable": true,
            "facts": {"os": "linux"},
            "extra": "kept for the helper",
        }));
        let inv = match fetch(&agents(&t), "n1").await {
            Ok(i) => i,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(inv.parsed.version, "0.29.4");
        assert!(inv.parsed.upgradable);
        assert!(inv.json.contains("kept for the helper"));
        // tried again after the timeout, as the inventory's policy says
        assert_eq!(t.asked(), ["rpcutil#inventory"; 2]);
    }
}
