//! Starting a simulated server and its run loop: where it subscribes, the connection it talks
//! on (provisioning, or production once provisioned) and the lifecycle events it publishes,
//! as a real server's process does around its agents.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use proto::lifecycle::{Event, EventType, PROVISION_MODE_COMPONENT};
use proto::subject;
use tokio::sync::mpsc;

use super::{Counters, Report, ServerSpec, SimServer, State, AGENTS};

/// Where a server listens in `collective`: its node subject and its agents' broadcasts.
async fn subscribe(
    nats: &async_nats::Client,
    identity: &str,
    collective: &str,
) -> Result<Vec<async_nats::Subscriber>, String> {
    let mut subs = vec![nats
        .subscribe(subject::node_directed(collective, identity))
        .await
        .map_err(|e| e.to_string())?];
    for agent in AGENTS {
        let s = subject::agent_broadcast(collective, agent);
        subs.push(nats.subscribe(s).await.map_err(|e| e.to_string())?);
    }
    Ok(subs)
}
impl SimServer {
    /// Subscribes where a real server does and announces the server; the returned task runs
    /// it until it leaves provisioning mode or shuts down.
    pub async fn start(
        spec: ServerSpec,
        nats: async_nats::Client,
        counters: Arc<Counters>,
        reports: mpsc::UnboundedSender<Report>,
    ) -> Result<tokio::task::JoinHandle<()>, String> {
        let subs = subscribe(&nats, &spec.identity, subject::PROVISIONING_COLLECTIVE).await?;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let (resubscribe, mut moves) = mpsc::unbounded_channel::<String>();
        let version = spec.version.clone();
        let server = Arc::new(SimServer {
            spec,
            current: Mutex::new(nats.clone()),
            nats,
            state: Mutex::new(State {
                provisioning: true,
                collective: subject::PROVISIONING_COLLECTIVE.into(),
                version,
                ..Default::default()
            }),
            counters,
            reports,
            stop,
            resubscribe,
        });
        let _ = server.nats.flush().await;
        let _ = server.reports.send(Report::Arrived {
            index: server.spec.index,
            at: Instant::now(),
        });
        server.publish_event(EventType::Startup).await;

        Ok(tokio::spawn(async move {
            let mut messages = futures::stream::select_all(subs);
            loop {
                tokio::select! {
                    msg = messages.next() => {
                        let Some(msg) = msg else { break };
                        let s = server.clone();
                        tokio::spawn(async move { s.handle(&msg.payload).await });
                    }
                    Some(collective) = moves.recv() => {
                        // a restart: the old subscriptions go away with the old stream
                        let conn = match server.connect_for(&collective).await {
                            Ok(c) => c,
                            Err(e) => {
                                tracing::warn!(identity = %server.spec.identity, error = %e, "reconnect failed");
                                break;
                            }
                        };
                        match subscribe(&conn, &server.spec.identity, &collective).await {
                            Ok(subs) => messages = futures::stream::select_all(subs),
                            Err(e) => {
                                tracing::warn!(identity = %server.spec.identity, error = %e, "resubscribe failed");
                                break;
                            }
                        }
                        let _ = conn.flush().await;
                        if let Ok(mut c) = server.current.lock() {
                            *c = conn;
                        }
                        let (kind, component) = if collective == subject::PROVISIONING_COLLECTIVE {
                            (EventType::Startup, PROVISION_MODE_COMPONENT)
                        } else {
                            (EventType::Startup, "server")
                        };
                        server.publish_event_as(kind, component).await;
                    }
                    _ = stopped.changed() => break,
                }
            }
            // drains pending publishes before the connection goes away
            let _ = server.nats.flush().await;
        }))
    }

    pub(super) async fn publish_event(&self, kind: EventType) {
        self.publish_event_as(kind, PROVISION_MODE_COMPONENT).await
    }

    pub(super) async fn publish_event_as(&self, kind: EventType, component: &str) {
        let event = Event::new(
            kind,
            &self.spec.identity,
            component,
            Some(&self.spec.version),
        );
        if let (Ok(subject), Ok(body)) = (event.subject(), event.to_json()) {
            let _ = self.conn().publish(subject, body.into()).await;
        }
    }

    pub(super) fn conn(&self) -> async_nats::Client {
        self.current
            .lock()
            .map(|c| c.clone())
            .unwrap_or_else(|_| self.nats.clone())
    }

    /// The connection to use in `collective`: the provisioning one, or a new production
    /// connection after provisioning.
    async fn connect_for(&self, collective: &str) -> Result<async_nats::Client, String> {
        match &self.spec.production {
            Some(p) if collective != subject::PROVISIONING_COLLECTIVE => {
                let mut opts = async_nats::ConnectOptions::with_user_and_password(
                    p.user.clone(),
                    p.password.clone(),
                )
                .name(format!("{} (production)", self.spec.identity));
                if let Some(ca) = &p.tls_ca {
                    opts = opts.require_tls(true).add_root_certificates(ca.clone());
                }
                opts.connect(p.url.clone()).await.map_err(|e| e.to_string())
            }
            _ => Ok(self.nats.clone()),
        }
    }
}
