//! What a member's provisioning works with, built once when the member starts
//! ([`crate::service`]) and shared by its tasks: the work queue and its flows
//! ([`crate::pipeline`]), discovery, lending and the admin API.
//!
//! The steps of a flow are handed the parts they need (the [`Agents`] to call servers, the
//! ledger, the [`Enrollment`]), not this whole value. The NATS client is not here: discovery
//! is handed it, and flows reach servers only through [`Agents`], so a flow runs without a
//! broker in tests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use raft::Ledger;

use crate::ca::Ca;
use crate::call::{Agents, Transport};
use crate::clock::now_ms;
use crate::config::Config;
use crate::enrollment::Enrollment;
use crate::helper::UserLogic;
use crate::jwt::JwtVerifier;
use crate::metrics::Metrics;
use crate::pipeline::CLAIM_LEASE_MS;
use crate::shard::Shard;

/// Everything a member's provisioning uses.
pub struct Services {
    pub(crate) config: Arc<Config>,
    /// This member's name in the ledger.
    pub(crate) member: String,
    /// Every call to a server's agent, with each action's retry policy.
    pub(crate) agents: Agents,
    pub(crate) ledger: Arc<dyn Ledger>,
    pub(crate) logic: Arc<dyn UserLogic>,
    pub(crate) enrollment: Enrollment,
    pub(crate) jwt: Option<JwtVerifier>,
    pub(crate) metrics: Arc<Metrics>,
    paused: AtomicBool,
    /// Set in a cluster: which servers this member works on.
    pub(crate) shard: Option<Arc<crate::shard::Shard>>,
    pub(crate) claim_lease_ms: u64,
    /// Flows by ownership epoch, and whether a server may be started without a claim.
    pub(crate) flows: Arc<crate::flows::Flows>,
    /// How many flows may run at once (see [`crate::pace`]).
    pub(crate) pace: Arc<crate::pace::Pace>,
}

/// What [`Services::new`] builds a member's services from; the rest follows from `config`.
pub struct Parts {
    pub(crate) config: Arc<Config>,
    /// How agent calls reach servers: the NATS client, or a simulated server in tests.
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) ledger: Arc<dyn Ledger>,
    pub(crate) logic: Arc<dyn UserLogic>,
    pub(crate) enrollment: Enrollment,
    pub(crate) jwt: Option<JwtVerifier>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) pace: Arc<crate::pace::Pace>,
}

impl Services {
    /// Built once when the member starts: the cluster section (or its absence) decides the
    /// shard, the claim lease and how flows start.
    pub fn new(p: Parts) -> Services {
        let config = p.config;
        let agents = Agents::new(
            p.transport,
            p.metrics.clone(),
            config.rpc_timeout,
            config.token.clone(),
        );
        Services {
            member: config.identity.clone(),
            agents,
            ledger: p.ledger,
            logic: p.logic,
            enrollment: p.enrollment,
            jwt: p.jwt,
            metrics: p.metrics,
            paused: AtomicBool::new(false),
            shard: config
                .cluster
                .as_ref()
                .map(|c| Arc::new(Shard::new(&config.identity, c.leader_share))),
            claim_lease_ms: config
                .cluster
                .as_ref()
                .map(|c| c.claim_lease.as_millis() as u64)
                .unwrap_or(CLAIM_LEASE_MS),
            flows: crate::flows::Flows::new(&config.identity, config.cluster.is_some()),
            pace: p.pace,
            config,
        }
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// True when this member should work on `identity` (always, outside a cluster): it owns
    /// it, or it is lent to it; not while it is lent to another.
    pub fn owns(&self, identity: &str) -> bool {
        let Some(shard) = &self.shard else {
            return true;
        };
        self.flows
            .lent(identity, now_ms())
            .unwrap_or_else(|| shard.owns(identity))
    }

    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
        self.metrics.set(&self.metrics.paused, paused as i64);
    }

    /// The built-in CA, when this member signs certificates.
    pub fn ca(&self) -> Option<&Ca> {
        self.enrollment.ca()
    }

    /// The ledger this member records in (read by tests and tools outside the crate).
    pub fn ledger(&self) -> &dyn Ledger {
        self.ledger.as_ref()
    }

    /// This member's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}
