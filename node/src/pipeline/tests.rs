//! [`provision`] end to end without a broker: a simulated server behind the [`Transport`]
//! trait, user logic in the process, the in-memory ledger and a CA in a temporary directory.
//! Each test follows one branch of the flow and checks what the server was asked, what the
//! helper saw and what the ledger recorded.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use proto::agents::ConfigureRequest;
use proto::rpc::{RpcReply, StatusCode};
use raft::state::EnrollState;
use raft::{Command, Ledger, LocalLedger};
use serde_json::{json, Value};

use super::{provision, Outcome};
use crate::ca::Ca;
use crate::call::tests::reply;
use crate::call::Transport;
use crate::clock::now_ms;
use crate::config::Config;
use crate::context::{Parts, Services};
use crate::enrollment::Enrollment;
use crate::helper::{HelperError, HelperRequest, HelperResponse, UserLogic};
use crate::jwt::JwtVerifier;
use crate::metrics::Metrics;
use crate::rpc::RpcError;

const ID: &str = "n1.example.net";
const CONFIGURE: &str = "choria_provision#configure";
const RESTART: &str = "choria_provision#restart";
const GENCSR: &str = "choria_provision#gencsr";
const INVENTORY: &str = "rpcutil#inventory";
const JWT: &str = "choria_provision#jwt";
const PING: &str = "rpcutil#ping";

/// A server in provisioning mode: answers what a real one would, makes a new key for every
/// CSR it is asked for, fails the actions it is told to and answers nothing to those it is
/// told to keep silent on.
#[derive(Default)]
struct Server {
    failing: Mutex<BTreeSet<&'static str>>,
    silent: Mutex<BTreeSet<&'static str>>,
    asked: Mutex<Vec<(String, Value)>>,
    /// The public key (DER) of the last CSR it made.
    last_key: Mutex<Vec<u8>>,
    /// The provisioning JWT it shows.
    jwt: Mutex<String>,
}

impl Server {
    fn fail(&self, rpc: &'static str) {
        self.failing.lock().unwrap().insert(rpc);
    }

    fn silence(&self, rpc: &'static str) {
        self.silent.lock().unwrap().insert(rpc);
    }

    fn asked(&self) -> Vec<String> {
        self.asked
            .lock()
            .unwrap()
            .iter()
            .map(|a| a.0.clone())
            .collect()
    }

    /// The configuration it was sent last.
    fn configured(&self) -> ConfigureRequest {
        let asked = self.asked.lock().unwrap();
        let data = asked
            .iter()
            .rev()
            .find(|a| a.0 == CONFIGURE)
            .map(|a| a.1.clone())
            .expect("configured");
        serde_json::from_value(data).unwrap()
    }

    fn answer(&self, rpc: &str) -> Result<RpcReply, RpcError> {
        if self.silent.lock().unwrap().contains(rpc) {
            return Err(RpcError::Timeout {
                rpc: rpc.to_string(),
                identity: ID.to_string(),
                timeout: Duration::from_secs(2),
            });
        }
        if self.failing.lock().unwrap().contains(rpc) {
            return Ok(reply(StatusCode::Aborted, json!({})));
        }
        let data = match rpc {
            INVENTORY => json!({
                "version": "0.29.4",
                "agents": ["rpcutil", "choria_provision"],
                "facts": {"index": "7", "role": "web"},
            }),
            GENCSR => {
                let key = rcgen::KeyPair::generate().unwrap();
                let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
                params.distinguished_name = rcgen::DistinguishedName::new();
                params
                    .distinguished_name
                    .push(rcgen::DnType::CommonName, ID);
                let csr = params.serialize_request(&key).unwrap().pem().unwrap();
                *self.last_key.lock().unwrap() =
                    rcgen::PublicKeyData::subject_public_key_info(&key);
                json!({"csr": csr, "ssldir": "/etc/choria/ssl"})
            }
            JWT => json!({"jwt": *self.jwt.lock().unwrap(), "ecdh_public": ""}),
            _ => json!({"message": "ok"}),
        };
        Ok(reply(StatusCode::Ok, data))
    }
}

impl Transport for Server {
    fn request<'a>(
        &'a self,
        _identity: &'a str,
        agent: &'static str,
        action: &'static str,
        data: Value,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<RpcReply, RpcError>> {
        let rpc = format!("{agent}#{action}");
        let answer = self.answer(&rpc);
        self.asked.lock().unwrap().push((rpc, data));
        Box::pin(async move { answer })
    }
}

/// User logic that answers every server the same way and keeps what it was asked.
struct Logic {
    answer: Mutex<Result<HelperResponse, HelperError>>,
    asked: Mutex<Vec<HelperRequest>>,
}

impl Logic {
    fn answering(answer: Result<HelperResponse, HelperError>) -> Arc<Logic> {
        Arc::new(Logic {
            answer: Mutex::new(answer),
            asked: Mutex::default(),
        })
    }

    fn configuring() -> Arc<Logic> {
        Logic::answering(Ok(HelperResponse {
            configuration: BTreeMap::from([
                ("identity".to_string(), ID.to_string()),
                (
                    "plugin.choria.middleware_hosts".to_string(),
                    "nats://broker.example.net:4222".to_string(),
                ),
            ]),
            ..HelperResponse::default()
        }))
    }
}

#[async_trait]
impl UserLogic for Logic {
    async fn decide(&self, request: &HelperRequest) -> Result<HelperResponse, HelperError> {
        self.asked.lock().unwrap().push(request.clone());
        match &*self.answer.lock().unwrap() {
            Ok(r) => Ok(r.clone()),
            Err(e) => Err(HelperError::Other(e.to_string())),
        }
    }
}

/// A provisioner that runs alone with the built-in CA, as `provisioner.yaml` with
/// `features: {pki: true}` makes it.
struct Site {
    _dir: tempfile::TempDir,
    ca_cert: String,
    ledger: Arc<LocalLedger>,
    server: Arc<Server>,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = ca(dir.path());
        Site {
            ca_cert: std::fs::read_to_string(cert).unwrap(),
            _dir: dir,
            ledger: Arc::new(LocalLedger::new()),
            server: Arc::new(Server::default()),
        }
    }

    /// The member's services with `logic`: each call a fresh member process over the same
    /// ledger (nothing in memory from an earlier flow).
    fn services(&self, logic: Arc<Logic>) -> Services {
        self.services_with(logic, false)
    }

    /// As [`Site::services`], verifying provisioning JWTs (feature `jwt`) with upstream's
    /// fixture signer when `jwt`.
    fn services_with(&self, logic: Arc<Logic>, jwt: bool) -> Services {
        let signer = fixture("provisioning-signer.pem");
        let config = Config::parse(
            &format!(
                "helper: /usr/local/bin/helper\n\
                 broker_provisioning_password: s3cret\n\
                 identity: prov1\n\
                 features: {{pki: true, jwt: {jwt}}}\n\
                 jwt_verify_cert: {}\n\
                 nats: {{servers: [nats://127.0.0.1:4222]}}\n",
                signer.display()
            ),
            Path::new("test.yaml"),
        )
        .unwrap();
        let verifier = std::fs::read(&signer).unwrap();
        let (cert, key) = ca(self._dir.path());
        let ca = Ca::load(&cert, &key, Duration::from_secs(86_400)).unwrap();
        Services::new(Parts {
            transport: self.server.clone(),
            ledger: self.ledger.clone(),
            logic,
            enrollment: Enrollment::X509 {
                ca: Some(Box::new(ca)),
            },
            jwt: jwt.then(|| JwtVerifier::from_pem(&verifier).unwrap()),
            metrics: Arc::new(Metrics::new(&config.site)),
            pace: crate::pace::Pace::new(config.workers),
            config: Arc::new(config),
        })
    }

    async fn record(&self) -> raft::Record {
        self.ledger.record(ID).await.expect("a record")
    }
}

/// A file of upstream's JWT fixtures (where they come from: `proto/testdata/README.md`).
fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../proto/testdata/fixtures")
        .join(name)
}

/// The CA in `dir`, made on first use.
fn ca(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (
        dir.join(crate::ca::CERT_FILE),
        dir.join(crate::ca::KEY_FILE),
    );
    if !cert.exists() {
        crate::ca::init(
            dir,
            "test CA",
            crate::ca::KeyType::EcdsaP256,
            Duration::from_secs(86_400),
            false,
        )
        .unwrap();
    }
    (cert, key)
}

fn step_errors(svc: &Services, reason: &str) -> u64 {
    svc.metrics
        .step_errors
        .with_label_values(&[&svc.config.site, reason])
        .get()
}

#[tokio::test(start_paused = true)]
async fn a_new_server_is_enrolled_configured_with_its_certificate_and_restarted() {
    let site = Site::new();
    let logic = Logic::configuring();
    let svc = site.services(logic.clone());

    assert_eq!(provision(&svc, ID, now_ms()).await, Outcome::Provisioned);

    assert_eq!(site.server.asked(), [INVENTORY, GENCSR, CONFIGURE, RESTART]);
    // the helper saw the inventory and the CSR, and no earlier enrollment
    let asked = logic.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 1);
    assert!(asked[0].inventory.contains("\"role\":\"web\""));
    assert!(asked[0].csr.as_ref().is_some_and(|c| !c.csr.is_empty()));
    assert!(asked[0].enrolled_before.is_none());

    // the certificate sent is for the key the server made, from our CA, and is the ledger's
    let sent = site.server.configured();
    let issued = crate::ca::describe(&sent.certificate).unwrap();
    let (_, cert) = x509_parser::pem::parse_x509_pem(sent.certificate.as_bytes()).unwrap();
    let cert = cert.parse_x509().unwrap();
    assert_eq!(
        cert.public_key().raw,
        site.server.last_key.lock().unwrap().as_slice()
    );
    assert_eq!(sent.ca, site.ca_cert);
    assert_eq!(sent.ssldir, "/etc/choria/ssl");
    let config: BTreeMap<String, String> = serde_json::from_str(&sent.config).unwrap();
    assert_eq!(config["identity"], ID);

    let rec = site.record().await;
    assert_eq!(rec.state, EnrollState::Enrolled);
    let cred = rec.credential.expect("a credential");
    assert_eq!(cred.serial, issued.serial);
    assert_eq!(cred.issued_by, "prov1");
    assert!(rec.superseded.is_none() && rec.revoked.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_deferred_server_gets_nothing_issued_and_is_not_configured() {
    let site = Site::new();
    let logic = Logic::answering(Ok(HelperResponse {
        defer: true,
        msg: "not in the CMDB yet".into(),
        ..HelperResponse::default()
    }));
    let svc = site.services(logic);

    let out = provision(&svc, ID, now_ms()).await;
    assert_eq!(out, Outcome::Deferred("not in the CMDB yet".into()));
    assert_eq!(site.server.asked(), [INVENTORY, GENCSR]);
    let rec = site.record().await;
    assert!(rec.credential.is_none());
    assert_ne!(rec.state, EnrollState::Enrolled);
    assert!(rec.owner.is_none(), "the claim is released");
}

#[tokio::test(start_paused = true)]
async fn the_helper_can_shut_a_server_down() {
    let site = Site::new();
    let logic = Logic::answering(Ok(HelperResponse {
        shutdown: true,
        msg: "decommissioned".into(),
        ..HelperResponse::default()
    }));
    let svc = site.services(logic);

    assert_eq!(provision(&svc, ID, now_ms()).await, Outcome::Shutdown);
    assert_eq!(
        site.server.asked(),
        [INVENTORY, GENCSR, "choria_provision#shutdown"]
    );
    assert!(site.record().await.credential.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_failing_helper_fails_the_flow_before_anything_is_issued() {
    let site = Site::new();
    let logic = Logic::answering(Err(HelperError::Exit {
        status: "exit status: 1".into(),
        stderr: "boom".into(),
    }));
    let svc = site.services(logic);

    let out = provision(&svc, ID, now_ms()).await;
    assert!(
        matches!(&out, Outcome::Failed(r) if r.contains("boom")),
        "{out:?}"
    );
    assert_eq!(site.server.asked(), [INVENTORY, GENCSR]);
    let rec = site.record().await;
    assert_eq!(rec.state, EnrollState::Failed);
    assert!(rec.credential.is_none());
    assert_eq!(step_errors(&svc, "helper"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_server_that_cannot_report_its_inventory_is_asked_nothing_else() {
    let site = Site::new();
    site.server.fail(INVENTORY);
    let svc = site.services(Logic::configuring());

    let out = provision(&svc, ID, now_ms()).await;
    assert!(matches!(out, Outcome::Failed(_)), "{out:?}");
    // asked as often as the inventory's retry policy says, then given up
    let asked = site.server.asked();
    assert!(asked.iter().all(|a| a == INVENTORY), "{asked:?}");
    assert!(asked.len() > 1, "{asked:?}");
    assert_eq!(site.record().await.state, EnrollState::Failed);
    assert_eq!(step_errors(&svc, "inventory"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_certificate_the_server_never_received_is_revoked_once_it_runs_with_the_next() {
    let site = Site::new();
    site.server.fail(CONFIGURE);
    let svc = site.services(Logic::configuring());

    let out = provision(&svc, ID, now_ms()).await;
    assert!(matches!(out, Outcome::Failed(_)), "{out:?}");
    // not restarted into a configuration it does not have
    assert!(!site.server.asked().contains(&RESTART.to_string()));
    // the ledger knew the certificate before it was sent, and knows the flow failed
    let first = site.record().await;
    assert_ne!(first.state, EnrollState::Enrolled);
    let undelivered = first
        .credential
        .expect("recorded before it was sent")
        .serial;

    // the next try issues another; the one never delivered is revoked, not left valid
    site.server.failing.lock().unwrap().clear();
    let svc = site.services(Logic::configuring());
    assert_eq!(provision(&svc, ID, now_ms()).await, Outcome::Provisioned);
    let rec = site.record().await;
    assert_eq!(rec.state, EnrollState::Enrolled);
    assert_ne!(
        rec.credential.as_ref().expect("credential").serial,
        undelivered
    );
    assert!(
        rec.revoked.iter().any(|r| r.serial == undelivered),
        "{rec:?}"
    );
    assert!(rec.superseded.is_none(), "{rec:?}");
}

/// Provisions the server, then records an operator's request to provision it again (as
/// `provisioner admin reprovision` does) once the settle time that keeps a just-enrolled
/// server to its flow is over; gives the serial it holds.
async fn enrolled_and_asked_again(site: &Site) -> String {
    let svc = site.services(Logic::configuring());
    assert_eq!(provision(&svc, ID, now_ms()).await, Outcome::Provisioned);
    let old = site.record().await.credential.expect("credential").serial;
    let request = Command::RequestReprovision {
        identity: ID.into(),
        member: "prov1/ops".into(),
        at_ms: now_ms() + raft::state::REENROLL_SETTLE_MS,
    };
    assert_eq!(
        site.ledger.propose(request).await.unwrap(),
        raft::Applied::Ok
    );
    old
}

/// As [`enrolled_and_asked_again`], then provisions it again with the server `set` up first,
/// a flow that fails at the restart; gives the serial it held and the flow's services.
async fn reenrolled_restart_failing(site: &Site, set: impl FnOnce(&Server)) -> (String, Services) {
    let old = enrolled_and_asked_again(site).await;
    set(&site.server);
    let svc = site.services(Logic::configuring());
    let out = provision(&svc, ID, now_ms()).await;
    assert!(matches!(out, Outcome::Failed(_)), "{out:?}");
    (old, svc)
}

fn unanswered(svc: &Services, result: &str) -> u64 {
    svc.metrics
        .restart_unanswered
        .with_label_values(&[svc.metrics.site(), result])
        .get()
}

#[tokio::test(start_paused = true)]
async fn a_reprovisioned_server_gets_a_new_certificate_and_its_old_one_is_revoked_once_restarted() {
    let site = Site::new();
    let old = enrolled_and_asked_again(&site).await;
    let logic = Logic::configuring();
    let svc = site.services(logic.clone());
    assert_eq!(provision(&svc, ID, now_ms()).await, Outcome::Provisioned);

    // the helper was told it is a re-enrollment, of which credential
    let asked = logic.asked.lock().unwrap().clone();
    let before = asked[0].enrolled_before.as_ref().expect("enrolled before");
    assert_eq!(before.serial, old);
    let rec = site.record().await;
    let new = rec.credential.expect("credential").serial;
    assert_ne!(new, old);
    // restarted with the new one: the old one is revoked as superseded, nothing is pending
    assert!(rec.superseded.is_none(), "{:?}", rec.superseded);
    assert_eq!(rec.revoked.len(), 1);
    assert_eq!(rec.revoked[0].serial, old);
    assert_eq!(rec.revoked[0].reason, format!("superseded by {new}"));
}

#[tokio::test(start_paused = true)]
async fn a_reprovisioned_server_that_left_without_answering_the_restart_has_its_old_certificate_revoked(
) {
    let site = Site::new();
    // it restarts, and neither its answer nor anything later comes back
    let (old, svc) = reenrolled_restart_failing(&site, |s| {
        s.silence(RESTART);
        s.silence(PING);
    })
    .await;
    assert_eq!(site.server.asked().last().map(String::as_str), Some(PING));
    let rec = site.record().await;
    let new = rec.credential.expect("credential").serial;
    assert_eq!(rec.state, EnrollState::Enrolled);
    assert!(rec.superseded.is_none(), "{:?}", rec.superseded);
    assert_eq!(rec.revoked.len(), 1);
    assert_eq!(rec.revoked[0].serial, old);
    assert_eq!(rec.revoked[0].reason, format!("superseded by {new}"));
    assert_eq!(unanswered(&svc, "left"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_reprovisioned_server_still_in_provisioning_mode_after_an_unanswered_restart_keeps_its_old_certificate(
) {
    let site = Site::new();
    // the restart's answer is lost, but the server still answers in provisioning mode
    let (old, svc) = reenrolled_restart_failing(&site, |s| s.silence(RESTART)).await;
    assert_eq!(site.server.asked().last().map(String::as_str), Some(PING));
    let rec = site.record().await;
    assert_eq!(rec.superseded.map(|c| c.serial), Some(old));
    assert!(rec.revoked.is_empty(), "{:?}", rec.revoked);
    assert_eq!(unanswered(&svc, "waiting"), 1);
    assert_eq!(unanswered(&svc, "left"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_restart_the_server_refused_is_not_followed_by_a_ping_and_revokes_nothing() {
    let site = Site::new();
    // it answered: it did not restart, whatever a ping would say
    let (old, svc) = reenrolled_restart_failing(&site, |s| {
        s.fail(RESTART);
        s.silence(PING);
    })
    .await;
    assert!(!site.server.asked().iter().any(|a| a == PING));
    let rec = site.record().await;
    assert_eq!(rec.superseded.map(|c| c.serial), Some(old));
    assert!(rec.revoked.is_empty(), "{:?}", rec.revoked);
    assert_eq!(unanswered(&svc, "left") + unanswered(&svc, "waiting"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_paused_member_stops_a_flow_before_it_issues_anything() {
    let site = Site::new();
    let svc = site.services(Logic::configuring());
    svc.set_paused(true);

    let out = provision(&svc, ID, now_ms()).await;
    assert!(matches!(out, Outcome::Failed(_)), "{out:?}");
    assert!(!site.server.asked().contains(&CONFIGURE.to_string()));
    assert!(site.record().await.credential.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_server_enrolled_moments_ago_is_left_alone() {
    let site = Site::new();
    let svc = site.services(Logic::configuring());
    assert_eq!(provision(&svc, ID, now_ms()).await, Outcome::Provisioned);
    let asked = site.server.asked().len();

    // seen in provisioning mode on its way out: still restarting, not a server that fell back
    let out = provision(&svc, ID, now_ms()).await;
    assert!(matches!(out, Outcome::Skipped(_)), "{out:?}");
    let other = site.services(Logic::configuring());
    let out = provision(&other, ID, now_ms()).await;
    assert!(matches!(out, Outcome::Skipped(_)), "{out:?}");
    assert_eq!(site.server.asked().len(), asked, "nothing more asked of it");
}

#[tokio::test(start_paused = true)]
async fn a_server_with_a_valid_provisioning_jwt_is_provisioned_and_the_helper_sees_its_claims() {
    let site = Site::new();
    *site.server.jwt.lock().unwrap() =
        std::fs::read_to_string(fixture("provisioning.jwt")).unwrap();
    let logic = Logic::configuring();
    let svc = site.services_with(logic.clone(), true);

    assert_eq!(provision(&svc, ID, now_ms()).await, Outcome::Provisioned);
    assert_eq!(
        site.server.asked(),
        [JWT, INVENTORY, GENCSR, CONFIGURE, RESTART]
    );
    let asked = logic.asked.lock().unwrap().clone();
    let claims = asked[0].jwt.as_ref().expect("the JWT's claims");
    assert_eq!(claims["chu"], "nats://localhost:4222");
}

#[tokio::test(start_paused = true)]
async fn a_forged_provisioning_jwt_is_rejected_before_the_ledger_hears_of_the_server() {
    let site = Site::new();
    *site.server.jwt.lock().unwrap() =
        std::fs::read_to_string(fixture("invalid-provisioning.jwt")).unwrap();
    let logic = Logic::configuring();
    let svc = site.services_with(logic.clone(), true);

    let out = provision(&svc, ID, now_ms()).await;
    assert!(
        matches!(&out, Outcome::Failed(r) if r.contains("JWT")),
        "{out:?}"
    );
    assert_eq!(site.server.asked(), [JWT]);
    assert!(logic.asked.lock().unwrap().is_empty());
    assert!(site.ledger.record(ID).await.is_none(), "nothing written");
    assert_eq!(step_errors(&svc, "jwt"), 1);
    let rejected = svc.metrics.render();
    assert!(
        rejected
            .lines()
            .any(|l| l.starts_with("choria_provisioner_rejected{") && l.ends_with(" 1")),
        "{rejected}"
    );
}
