//! Prometheus metrics with upstream's names and `site` label, and the HTTP endpoint that
//! serves them on `monitor_port`.
//!
//! Upstream exports `_rpc_time` and `_helper_time` as summaries; the Rust client has no
//! summaries, so they are histograms here. Their `_sum` and `_count` series are the same, so
//! rate-based dashboards keep working.

use std::net::SocketAddr;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the provisioner exports.
pub struct Metrics {
    registry: Registry,
    site: String,
    pub rpc_time: HistogramVec,
    pub helper_time: HistogramVec,
    pub discovered: IntCounterVec,
    pub event_discovered: IntCounterVec,
    pub discover_cycles: IntCounterVec,
    pub rpc_errors: IntCounterVec,
    pub helper_errors: IntCounterVec,
    pub discovery_errors: IntCounterVec,
    pub provision_errors: IntCounterVec,
    /// Failed flows by the step error's reason (`StepError::reason`).
    pub step_errors: IntCounterVec,
    pub paused: IntGaugeVec,
    pub busy_workers: IntGaugeVec,
    /// How many flows this member may run at once now (`workers`, fewer while its ledger
    /// writes are slow; see [`crate::pace`]).
    pub flow_limit: IntGaugeVec,
    /// Times the flow limit was cut for slow ledger writes.
    pub flow_limit_cuts: IntCounterVec,
    /// Flows this member stopped at its own fence, to be started again first.
    pub flows_interrupted: IntCounterVec,
    pub provisioned: IntCounterVec,
    pub work_queue_entries: IntGaugeVec,
    pub waiting_nodes: IntGaugeVec,
    pub helper_shutdown_requests: IntCounterVec,
    pub deferred: IntCounterVec,
    /// Version updates, by result: started, current (already at the version), skipped
    /// (failed but upgrades are optional), failed.
    pub upgrades: IntCounterVec,
    /// Messages off the wire that could not be decoded, by kind (reply, event, ...).
    pub bad_messages: IntCounterVec,
    /// Servers refused for a reason (jwt, csr_signature, csr_cn, csr_denied, ...).
    pub rejected: IntCounterVec,
    pub raft_term: IntGaugeVec,
    pub raft_leader: IntGaugeVec,
    /// New leaders this member has seen elected.
    pub raft_leader_changes: IntCounterVec,
    /// Time from proposing a ledger command until the leader's result comes back (a follower
    /// forwards its proposals), by command kind and result (ok, error).
    pub ledger_commit_time: HistogramVec,
    pub raft_last_log_index: IntGaugeVec,
    pub raft_last_applied: IntGaugeVec,
    pub raft_voters: IntGaugeVec,
    pub live_members: IntGaugeVec,
    /// Servers this member holds a claim on (its shard in progress).
    pub owned: IntGaugeVec,
    /// Ledger records by state.
    pub ledger_records: IntGaugeVec,
    /// Admin API calls by method and gRPC status code.
    pub admin_requests: IntCounterVec,
    /// Calls on the Raft port refused by authorization, by call and reason.
    pub raft_refused: IntCounterVec,
    /// Servers enrolled again with a new credential while the ledger held one for them.
    pub reenrolled: IntCounterVec,
    /// Re-enrolled servers whose restart got no answer, by what a ping then showed (left,
    /// waiting, unknown).
    pub restart_unanswered: IntCounterVec,
    /// Sightings not queued because `max_waiting` servers wait already, by source.
    pub waiting_dropped: IntCounterVec,
    /// Locks of the work queue a panic left poisoned, taken over by the next user, by lock.
    pub poisoned_locks: IntCounterVec,
    /// Servers lent to or borrowed from other members, by result (lent, borrowed, refused,
    /// failed).
    pub loans: IntCounterVec,
    /// Failed records that never held a credential, dropped after `failed_retention`.
    pub ledger_forgotten: IntCounterVec,
    /// Reprovision requests sent by the admin API, by result (ok, no_answer, error).
    pub reprovision_requests: IntCounterVec,
    pub renewals: IntCounterVec,
    /// Servers in the leader's discovery offers, by result: sent and failed (as the leader),
    /// queued and refused (as the member offered them).
    pub discovery_offers: IntCounterVec,
    /// Discovery rounds this member left to the leader, whose discovery covers it.
    pub discover_deferred: IntCounterVec,
    /// Revoked credentials in the ledger (the CRL's size before expired entries drop out).
    pub revoked: IntGaugeVec,
}

// Metric definitions are constants of this program; registering them can only fail on a
// programming error (a duplicate name), never on input.
#[allow(clippy::expect_used)]
impl Metrics {
    pub fn new(site: &str) -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric");
            registry.register(Box::new(c.clone())).expect("register");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["site"]).expect("metric");
            registry.register(Box::new(g.clone())).expect("register");
            g
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let buckets = vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ];
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .expect("metric");
            registry.register(Box::new(h.clone())).expect("register");
            h
        };
        let site_l = &["site"][..];
        let rpc_l = &["site", "rpc"][..];
        let m = Metrics {
            rpc_time: histogram(
                "choria_provisioner_rpc_time",
                "How long it took to perform RPC requests",
                rpc_l,
            ),
            helper_time: histogram(
                "choria_provisioner_helper_time",
                "How long it took to run the helper",
                site_l,
            ),
            discovered: counter(
                "choria_provisioner_discovered",
                "How many nodes were found through discovery",
                site_l,
            ),
            event_discovered: counter(
                "choria_provisioner_event_discovered",
                "How many nodes were found through receiving an event about them",
                site_l,
            ),
            discover_cycles: counter(
                "choria_provisioner_discover_cycles",
                "How many discovery cycles were ran",
                site_l,
            ),
            rpc_errors: counter(
                "choria_provisioner_rpc_errors",
                "How many rpc related errors were encountered",
                rpc_l,
            ),
            helper_errors: counter(
                "choria_provisioner_helper_errors",
                "How many helper related errors were encountered",
                site_l,
            ),
            discovery_errors: counter(
                "choria_provisioner_discovery_errors",
                "How many discovery related errors were encountered",
                site_l,
            ),
            provision_errors: counter(
                "choria_provisioner_provision_errors",
                "How many provision related errors were encountered",
                site_l,
            ),
            step_errors: counter(
                "choria_provisioner_step_errors",
                "Failed provisioning flows by the step that failed and why",
                &["site", "reason"],
            ),
            paused: gauge("choria_provisioner_paused", "1 when provisioning is paused"),
            busy_workers: gauge(
                "choria_provisioner_busy_workers",
                "How many workers are busy provisioning nodes",
            ),
            flow_limit: gauge(
                "choria_provisioner_flow_limit",
                "How many flows this member may run at once: workers, fewer while its ledger writes are slow",
            ),
            flows_interrupted: counter(
                "choria_provisioner_flows_interrupted",
                "How many flows this member stopped because it was fenced (no heartbeat committed lately); each starts again first",
                site_l,
            ),
            flow_limit_cuts: counter(
                "choria_provisioner_flow_limit_cuts",
                "How many times the flow limit was cut because ledger writes were slow",
                site_l,
            ),
            provisioned: counter(
                "choria_provisioner_provisioned",
                "How many nodes were successfully provisioned",
                site_l,
            ),
            work_queue_entries: gauge(
                "choria_provisioner_work_queue_entries",
                "Number of nodes on the work queue waiting to be provisioned",
            ),
            waiting_nodes: gauge(
                "choria_provisioner_waiting_nodes",
                "The number of nodes currently waiting to be provisioned",
            ),
            helper_shutdown_requests: counter(
                "choria_provisioner_helper_shutdown_requests",
                "How many times the helper asked for a node to be shutdown and it succeeded",
                site_l,
            ),
            deferred: counter(
                "choria_provisioner_deferred",
                "How many times provisioning of a node was deferred for a later retry",
                site_l,
            ),
            upgrades: counter(
                "choria_provisioner_upgrades",
                "Server version updates asked for by the helper, by result",
                &["site", "result"],
            ),
            bad_messages: counter(
                "choria_provisioner_bad_messages",
                "Messages received from the network that could not be decoded",
                &["site", "kind"],
            ),
            rejected: counter(
                "choria_provisioner_rejected",
                "Nodes refused because their credentials or requests failed a check",
                &["site", "reason"],
            ),
            raft_term: gauge("choria_provisioner_raft_term", "Current Raft term"),
            raft_leader: gauge(
                "choria_provisioner_raft_leader",
                "Raft node id of the current leader (0 when none)",
            ),
            raft_leader_changes: counter(
                "choria_provisioner_raft_leader_changes",
                "How many times this member saw a new Raft leader",
                site_l,
            ),
            ledger_commit_time: histogram(
                "choria_provisioner_ledger_commit_time",
                "How long a ledger command took from proposal until its result came back (committed and applied by the leader)",
                &["site", "command", "result"],
            ),
            raft_last_log_index: gauge(
                "choria_provisioner_raft_last_log_index",
                "Index of the last entry in this member's Raft log",
            ),
            raft_last_applied: gauge(
                "choria_provisioner_raft_last_applied",
                "Index of the last entry applied to this member's ledger",
            ),
            raft_voters: gauge(
                "choria_provisioner_raft_voters",
                "Voting members in the committed membership",
            ),
            live_members: gauge(
                "choria_provisioner_live_members",
                "Members with a recent heartbeat, sharing the waiting servers",
            ),
            owned: gauge(
                "choria_provisioner_owned",
                "Servers this member holds: its flows in progress, plus ledger claims before ownership epochs",
            ),
            ledger_records: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "choria_provisioner_ledger_records",
                        "Enrollment ledger records by state",
                    ),
                    &["site", "state"],
                )
                .expect("metric");
                registry.register(Box::new(g.clone())).expect("register");
                g
            },
            admin_requests: counter(
                "choria_provisioner_admin_requests",
                "Admin API calls by method and status code",
                &["site", "method", "code"],
            ),
            raft_refused: counter(
                "choria_provisioner_raft_refused",
                "Calls on the Raft port refused: the caller's certificate names no member allowed to make them",
                &["site", "rpc", "reason"],
            ),
            reenrolled: counter(
                "choria_provisioner_reenrolled",
                "Servers enrolled again with a new credential while the ledger held one for them",
                &["site"],
            ),
            restart_unanswered: counter(
                "choria_provisioner_restart_unanswered",
                "Re-enrolled servers whose restart got no answer, by what a ping in provisioning mode then showed",
                &["site", "result"],
            ),
            waiting_dropped: counter(
                "choria_provisioner_waiting_dropped",
                "Servers not queued because max_waiting servers wait already",
                &["site", "source"],
            ),
            poisoned_locks: counter(
                "choria_provisioner_poisoned_locks",
                "Work queue locks a panic left poisoned, taken over by the next user",
                &["site", "lock"],
            ),
            loans: counter(
                "choria_provisioner_loans",
                "Servers lent to or borrowed from other members at the end of a fleet, by result",
                &["site", "result"],
            ),
            ledger_forgotten: counter(
                "choria_provisioner_ledger_forgotten",
                "Failed ledger records that never held a credential, dropped after failed_retention",
                &["site"],
            ),
            reprovision_requests: counter(
                "choria_provisioner_reprovision_requests",
                "Reprovision requests sent to servers, by result",
                &["site", "result"],
            ),
            renewals: counter(
                "choria_provisioner_renewals",
                "Servers asked to reprovision because their credential ends within renew_before, by result",
                &["site", "result"],
            ),
            discovery_offers: counter(
                "choria_provisioner_discovery_offers",
                "Servers in the leader's discovery offers, by result (sent, failed, queued, refused)",
                &["site", "result"],
            ),
            discover_deferred: counter(
                "choria_provisioner_discover_deferred",
                "Discovery rounds left to the leader, whose discovery covers this member",
                site_l,
            ),
            revoked: gauge(
                "choria_provisioner_revoked_credentials",
                "Revoked credentials recorded in the ledger",
            ),
            registry,
            site: site.to_string(),
        };
        // Make every site series exist from the start, as upstream does.
        for c in [
            &m.discovered,
            &m.event_discovered,
            &m.discover_cycles,
            &m.discover_deferred,
            &m.helper_errors,
            &m.discovery_errors,
            &m.provision_errors,
            &m.provisioned,
            &m.helper_shutdown_requests,
            &m.deferred,
            &m.raft_leader_changes,
            &m.flow_limit_cuts,
            &m.flows_interrupted,
        ] {
            c.with_label_values(&[site]).reset();
        }
        for g in [
            &m.paused,
            &m.busy_workers,
            &m.work_queue_entries,
            &m.waiting_nodes,
        ] {
            g.with_label_values(&[site]).set(0);
        }
        m
    }

    pub fn site(&self) -> &str {
        &self.site
    }

    /// Increments a counter labelled only with the site.
    pub fn inc(&self, c: &IntCounterVec) {
        c.with_label_values(&[&self.site]).inc();
    }

    pub fn set(&self, g: &IntGaugeVec, v: i64) {
        g.with_label_values(&[&self.site]).set(v);
    }

    pub fn add(&self, g: &IntGaugeVec, v: i64) {
        g.with_label_values(&[&self.site]).add(v);
    }

    /// Adds `n` servers to the offers counted under `result`.
    pub fn offers(&self, result: &str, n: u64) {
        self.discovery_offers
            .with_label_values(&[&self.site, result])
            .inc_by(n);
    }

    pub fn bad_message(&self, kind: &str) {
        self.bad_messages
            .with_label_values(&[&self.site, kind])
            .inc();
    }

    /// A flow that failed, by its step error's reason.
    pub fn step_error(&self, reason: &str) {
        self.step_errors
            .with_label_values(&[&self.site, reason])
            .inc();
    }

    pub fn rejected(&self, reason: &str) {
        self.rejected.with_label_values(&[&self.site, reason]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Produces the `/status` document.
pub type StatusFn = std::sync::Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>> + Send + Sync,
>;

/// Serves `/metrics` and `/status` (JSON) until the task is dropped.
pub async fn serve(
    metrics: std::sync::Arc<Metrics>,
    addr: SocketAddr,
    status: StatusFn,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let m = metrics.clone();
                async move { m.render() }
            }),
        )
        .route(
            "/status",
            axum::routing::get(move || {
                let s = status.clone();
                async move { s().await }
            }),
        );
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_names_are_exported_with_site() {
        let m = Metrics::new("lon");
        m.inc(&m.provisioned);
        m.rpc_time
            .with_label_values(&["lon", "choria_provision#jwt"])
            .observe(0.01);
        let text = m.render();
        for name in [
            "choria_provisioner_provisioned{site=\"lon\"} 1",
            "choria_provisioner_paused{site=\"lon\"} 0",
            "choria_provisioner_busy_workers",
            "choria_provisioner_discover_cycles",
            "choria_provisioner_helper_errors",
            "choria_provisioner_rpc_time_count{rpc=\"choria_provision#jwt\",site=\"lon\"} 1",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
