//! The agent actions the provisioner calls, each tied to its agent, its action name and the
//! typed request and reply of [`agents`](crate::agents), so a call cannot send one action's
//! input to another or read its output as the wrong type.
//!
//! One zero-sized type per action; [`Action`] carries what the wire needs. The list is the
//! provisioner's side of the `choria_provision` and `rpcutil` DDLs: a test checks every action
//! here exists in its DDL and that a default request passes the DDL's validation where the DDL
//! has no required input beyond the token.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::agents::{
    ConfigureRequest, CsrReply, CsrRequest, Ed25519Reply, Ed25519Request, InventoryReply, JwtReply,
    MessageReply, PingReply, ReleaseUpdateRequest, RestartRequest, TokenRequest, PROVISION_AGENT,
    RPCUTIL_AGENT,
};

/// One action of one agent: what goes in the RPC body's `data`, and what comes back in it.
pub trait Action {
    /// The agent (`choria_provision`, `rpcutil`).
    const AGENT: &'static str;
    /// The action's name as the DDL spells it.
    const ACTION: &'static str;
    type Request: Serialize + Send + Sync;
    type Reply: DeserializeOwned + Send;

    /// `agent#action`, as logs and metric labels name a call.
    fn rpc() -> String {
        format!("{}#{}", Self::AGENT, Self::ACTION)
    }
}

macro_rules! action {
    ($(#[$doc:meta])* $name:ident, $agent:expr, $action:literal, $req:ty, $reply:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $name;

        impl Action for $name {
            const AGENT: &'static str = $agent;
            const ACTION: &'static str = $action;
            type Request = $req;
            type Reply = $reply;
        }
    };
}

action!(
    /// `rpcutil#inventory`: agents, facts, version and whether the server can upgrade.
    Inventory, RPCUTIL_AGENT, "inventory", serde_json::Value, InventoryReply
);
action!(
    /// `rpcutil#ping`: whether the server is there, in the collective it is asked in.
    Ping, RPCUTIL_AGENT, "ping", serde_json::Value, PingReply
);
action!(
    /// `choria_provision#jwt`: the server's provisioning JWT and its X25519 key.
    Jwt, PROVISION_AGENT, "jwt", TokenRequest, JwtReply
);
action!(
    /// `choria_provision#gencsr`: the server makes a key and a CSR for it.
    GenCsr, PROVISION_AGENT, "gencsr", CsrRequest, CsrReply
);
action!(
    /// `choria_provision#gen25519`: the server makes an ed25519 key and signs our nonce.
    Gen25519, PROVISION_AGENT, "gen25519", Ed25519Request, Ed25519Reply
);
action!(
    /// `choria_provision#configure`: writes the server's configuration and credentials.
    Configure, PROVISION_AGENT, "configure", ConfigureRequest, MessageReply
);
action!(
    /// `choria_provision#restart`: restarts the server into its configuration.
    Restart, PROVISION_AGENT, "restart", RestartRequest, MessageReply
);
action!(
    /// `choria_provision#reprovision`: sends a provisioned server back to provisioning mode.
    Reprovision, PROVISION_AGENT, "reprovision", TokenRequest, MessageReply
);
action!(
    /// `choria_provision#release_update`: the server updates itself to another version.
    ReleaseUpdate, PROVISION_AGENT, "release_update", ReleaseUpdateRequest, MessageReply
);
action!(
    /// `choria_provision#shutdown`: the server stops.
    Shutdown, PROVISION_AGENT, "shutdown", TokenRequest, MessageReply
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ddl;

    fn in_ddl<A: Action>() {
        let Some(d) = ddl::for_agent(A::AGENT) else {
            panic!("no DDL for {}", A::AGENT);
        };
        assert!(
            d.action(A::ACTION).is_some(),
            "{} is not in its DDL",
            A::rpc()
        );
    }

    #[test]
    fn every_action_is_in_its_agents_ddl() {
        in_ddl::<Inventory>();
        in_ddl::<Ping>();
        in_ddl::<Jwt>();
        in_ddl::<GenCsr>();
        in_ddl::<Gen25519>();
        in_ddl::<Configure>();
        in_ddl::<Restart>();
        in_ddl::<Reprovision>();
        in_ddl::<ReleaseUpdate>();
        in_ddl::<Shutdown>();
    }

    #[test]
    fn typed_requests_pass_their_ddls_validation() {
        fn valid<A: Action>(req: &A::Request) {
            let data = match serde_json::to_value(req) {
                Ok(v) => v,
                Err(e) => panic!("{}: {e}", A::rpc()),
            };
            let d = ddl::for_agent(A::AGENT).map(|d| d.validate(A::ACTION, &data));
            assert!(matches!(d, Some(Ok(()))), "{}: {d:?}", A::rpc());
        }
        let token = || TokenRequest { token: "t".into() };
        valid::<Inventory>(&serde_json::json!({}));
        valid::<Ping>(&serde_json::json!({}));
        valid::<Jwt>(&token());
        valid::<Shutdown>(&token());
        valid::<Reprovision>(&token());
        valid::<GenCsr>(&CsrRequest {
            token: "t".into(),
            cn: "n1.example.net".into(),
            ..Default::default()
        });
        valid::<Gen25519>(&Ed25519Request {
            token: "t".into(),
            nonce: "abc".into(),
        });
        valid::<Restart>(&RestartRequest {
            token: "t".into(),
            splay: Some(1),
        });
        valid::<ReleaseUpdate>(&ReleaseUpdateRequest {
            token: "t".into(),
            repository: "https://example.net/repo".into(),
            version: "0.29.4".into(),
        });
        valid::<Configure>(&ConfigureRequest {
            token: "t".into(),
            config: "{\"plugin.choria.server.provision\":\"false\"}".into(),
            ..Default::default()
        });
    }
}
