//! User logic compiled in instead of a helper program: the `UserLogic` trait drives the same
//! pipeline against real servers (the fleet simulator over a real nats-server).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cluster_tests::{init_ca, FleetOptions, FleetProcess, Nats};
use node::config::Config;
use node::helper::{HelperError, HelperRequest, HelperResponse, UserLogic};
use node::service::Provisioner;

struct Logic {
    calls: AtomicUsize,
}

#[async_trait]
impl UserLogic for Logic {
    async fn decide(&self, req: &HelperRequest) -> Result<HelperResponse, HelperError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        configure(req)
    }
}

/// Defers sim-00000 twice, shuts sim-00001 down, configures the rest.
struct Picky {
    deferred: AtomicUsize,
}

#[async_trait]
impl UserLogic for Picky {
    async fn decide(&self, req: &HelperRequest) -> Result<HelperResponse, HelperError> {
        if req.identity.starts_with("sim-00000.")
            && self.deferred.fetch_add(1, Ordering::Relaxed) < 2
        {
            return Ok(HelperResponse {
                defer: true,
                msg: "waiting for the CMDB".into(),
                ..Default::default()
            });
        }
        if req.identity.starts_with("sim-00001.") {
            return Ok(HelperResponse {
                shutdown: true,
                msg: "decommissioned".into(),
                ..Default::default()
            });
        }
        configure(req)
    }
}

fn configure(req: &HelperRequest) -> Result<HelperResponse, HelperError> {
    // the inventory arrives as a JSON string, the CSR as upstream's gencsr reply
    let inventory: serde_json::Value =
        serde_json::from_str(&req.inventory).map_err(|e| HelperError::Other(e.to_string()))?;
    let csr = req
        .csr
        .as_ref()
        .ok_or(HelperError::Other("no csr".into()))?;
    let mut configuration = BTreeMap::new();
    configuration.insert("identity".into(), req.identity.clone());
    configuration.insert("plugin.choria.server.provision".into(), "false".into());
    configuration.insert("plugin.choria.ssldir".into(), csr.ssldir.clone());
    configuration.insert(
        "collectives".into(),
        inventory["main_collective"]
            .as_str()
            .unwrap_or("choria")
            .into(),
    );
    Ok(HelperResponse {
        configuration,
        ..Default::default()
    })
}

/// A broker, a waiting fleet of `servers` and a provisioner running `logic` in this process.
struct Run {
    rt: tokio::runtime::Runtime,
    prov: Provisioner,
    fleet: FleetProcess,
    _nats: Nats,
    _dir: tempfile::TempDir,
}

fn start(servers: usize, extra_yaml: &str, logic: Arc<dyn UserLogic>) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let ca = init_ca(dir.path());
    let fleet = FleetProcess::start(
        dir.path(),
        &nats,
        &ca.0,
        &FleetOptions {
            servers,
            timeout_secs: 120,
            ..Default::default()
        },
        false,
    );
    let yaml = format!(
        "identity: lib.example.net\nbroker_provisioning_password: \"{}\"\njwt_verify_cert: {}\nfeatures: {{pki: true, jwt: true}}\nnats: {{servers: [\"{}\"]}}\nca: {{cert: {}, key: {}}}\n{extra_yaml}",
        nats.creds.provisioner,
        fleet.signer_pub.display(),
        nats.url,
        ca.0.display(),
        ca.1.display()
    );
    let config = Config::parse(&yaml, std::path::Path::new("inline.yaml")).unwrap();
    // no helper program: the compiled-in logic decides
    assert!(config.helper.is_empty());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let prov = rt
        .block_on(Provisioner::start(config, Some(logic), None))
        .unwrap();
    Run {
        rt,
        prov,
        fleet,
        _nats: nats,
        _dir: dir,
    }
}

#[test]
fn helper_defer_and_shutdown_are_retried_and_recorded() {
    let logic = Arc::new(Picky {
        deferred: AtomicUsize::new(0),
    });
    let Run {
        rt,
        prov,
        fleet,
        _nats,
        _dir,
    } = start(
        6,
        "retry_backoff_min: 1s\nretry_backoff_max: 2s\n",
        logic.clone(),
    );
    let summary = fleet.finish(Duration::from_secs(180));
    // five configured (one after two deferrals), one shut down by the simulator's own count
    assert_eq!(summary["provisioned"], 5, "{summary}");
    assert_eq!(summary["shutdowns"], 1, "{summary}");
    let records = rt.block_on(prov.services.ledger().records());
    let rec = |prefix: &str| {
        records
            .iter()
            .find(|r| r.identity.starts_with(prefix))
            .cloned()
            .unwrap_or_else(|| panic!("no record for {prefix}"))
    };
    let deferred = rec("sim-00000.");
    assert_eq!(deferred.state, raft::EnrollState::Enrolled);
    assert_eq!(deferred.attempts, 3, "{deferred:?}");
    let deferrals = deferred
        .history
        .iter()
        .filter(|h| h.event.to_string() == "deferred: waiting for the CMDB")
        .count();
    assert_eq!(deferrals, 2, "{:?}", deferred.history);
    let shut = rec("sim-00001.");
    assert_eq!(shut.state, raft::EnrollState::Shutdown);
    assert!(shut.credential.is_none());
    assert!(shut
        .history
        .iter()
        .any(|h| h.event.to_string() == "shut down: decommissioned"));
    let metrics = prov.services.metrics().render();
    assert!(
        metrics.contains("choria_provisioner_deferred{site=\"\"} 2"),
        "{metrics}"
    );
    rt.block_on(prov.stop());
}

#[test]
fn compiled_in_user_logic_provisions_servers() {
    let logic = Arc::new(Logic {
        calls: AtomicUsize::new(0),
    });
    let Run {
        rt,
        prov,
        fleet,
        _nats,
        _dir,
    } = start(12, "", logic.clone());
    let summary = fleet.finish(Duration::from_secs(180));
    assert_eq!(summary["provisioned"], 12, "{summary}");
    assert_eq!(summary["verified"], 12, "{summary}");
    assert_eq!(logic.calls.load(Ordering::Relaxed), 12);
    let records = rt.block_on(prov.services.ledger().records());
    assert_eq!(records.len(), 12);
    assert!(records
        .iter()
        .all(|r| r.state == raft::EnrollState::Enrolled && r.credential.is_some()));
    rt.block_on(prov.stop());
}

#[test]
fn neither_helper_nor_user_logic_refuses_to_start() {
    let yaml = "broker_provisioning_password: x\nnats: {servers: [\"nats://127.0.0.1:1\"]}\n";
    let config = Config::parse(yaml, std::path::Path::new("inline.yaml")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = rt.block_on(Provisioner::start(config, None, None)).err();
    assert!(matches!(err, Some(node::service::ServiceError::NoHelper)));
}
