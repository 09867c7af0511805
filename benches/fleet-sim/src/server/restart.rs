//! The actions that restart a server, each after its own delay as upstream's agent: `restart`
//! (out of provisioning mode, or back to waiting), `reprovision` and falling back on its own
//! (back to provisioning mode with no key), and `release_update` (a new version).

use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::agents::{MessageReply, RestartRequest};
use proto::lifecycle::EventType;
use proto::rpc::StatusCode;
use proto::subject;
use serde_json::{json, Value};

use super::provision::to_value;
use super::{Report, SimServer, State, CONFIG_FILE};

impl SimServer {
    /// Upstream's release_update: fetch the release (here: only from the repository the
    /// server can reach), then restart into provisioning mode running it, after 2 s.
    pub(super) fn release_update(
        self: &Arc<Self>,
        args: proto::agents::ReleaseUpdateRequest,
    ) -> Result<Value, (StatusCode, String)> {
        if !self.spec.upgradable {
            return Err((
                StatusCode::Aborted,
                "Version updates is not enabled in the configuration".into(),
            ));
        }
        let reachable = self
            .spec
            .upgrade_repository
            .as_deref()
            .is_some_and(|r| *r == args.repository);
        if !reachable || args.version.is_empty() {
            return Err((
                StatusCode::Aborted,
                format!(
                    "Update to version {} failed, release rolled back: cannot fetch it from {}",
                    args.version, args.repository
                ),
            ));
        }
        let s = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            s.publish_event(EventType::Shutdown).await;
            if let Ok(mut st) = s.state.lock() {
                st.version = args.version.clone();
                st.lock = None;
            }
            let _ = s.reports.send(Report::Upgraded {
                index: s.spec.index,
                version: args.version,
            });
            s.publish_event(EventType::Startup).await;
        });
        to_value(&MessageReply {
            message: "Restarting Choria Server after 2s".into(),
        })
    }

    pub(super) fn restart(
        self: &Arc<Self>,
        args: RestartRequest,
    ) -> Result<Value, (StatusCode, String)> {
        let provision_setting = {
            let Ok(mut st) = self.state.lock() else {
                return Err((StatusCode::Aborted, "state poisoned".into()));
            };
            let Some(config) = &st.config else {
                return Err((
                    StatusCode::Aborted,
                    format!(
                        "Configuration {CONFIG_FILE} could not be parsed, restart cannot continue"
                    ),
                ));
            };
            let setting = config.get("plugin.choria.server.provision").cloned();
            if setting.as_deref() == Some("true") {
                return Err((
                    StatusCode::Aborted,
                    format!(
                        "Configuration {CONFIG_FILE} enables provisioning, restart cannot continue"
                    ),
                ));
            }
            if st.restarting {
                return Ok(json!({"message": "Restart already scheduled"}));
            }
            st.restarting = true;
            setting
        };
        if provision_setting.as_deref() == Some("false") {
            let _ = self.reports.send(Report::Configured {
                index: self.spec.index,
                at: Instant::now(),
            });
        }
        let splay = args.splay.filter(|s| *s > 0).unwrap_or(10);
        let delay = Duration::from_secs(rand::random::<u64>() % splay + 2);
        let s = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            s.publish_event(EventType::Shutdown).await;
            if provision_setting.as_deref() == Some("false") {
                let (verified, serial, main) = s
                    .state
                    .lock()
                    .map(|st| {
                        let main = st
                            .config
                            .as_ref()
                            .and_then(|c| c.get("main_collective").cloned())
                            .unwrap_or_else(|| "mcollective".into());
                        (st.verified, st.serial.clone(), main)
                    })
                    .unwrap_or((false, None, "mcollective".into()));
                let _ = s.reports.send(Report::Provisioned {
                    index: s.spec.index,
                    at: Instant::now(),
                    verified,
                    serial,
                });
                if s.spec.stay {
                    // up again as a provisioned server in its main collective
                    if let Ok(mut st) = s.state.lock() {
                        st.provisioning = false;
                        st.restarting = false;
                        st.lock = None;
                        st.collective = main.clone();
                    }
                    let _ = s.resubscribe.send(main);
                    let first = s.state.lock().map(|st| !st.fell_back).unwrap_or(false);
                    if let (Some(after), true) = (s.spec.fall_back_after, first) {
                        s.back_to_provisioning(
                            after,
                            Report::FellBack {
                                index: s.spec.index,
                            },
                        );
                    }
                } else {
                    let _ = s.stop.send(true);
                }
            } else {
                // the new configuration does not turn provisioning off: back to waiting
                if let Ok(mut st) = s.state.lock() {
                    st.restarting = false;
                    st.lock = None;
                }
                s.publish_event(EventType::Startup).await;
            }
        });
        to_value(&MessageReply {
            message: format!("Restarting Choria Server after {}s", delay.as_secs()),
        })
    }

    /// Upstream's reprovision: a configuration with provisioning on, then a restart after a
    /// 2-11 s splay, which brings the server back waiting with no key or certificate.
    pub(super) fn reprovision(self: &Arc<Self>) -> Result<Value, (StatusCode, String)> {
        {
            let Ok(mut st) = self.state.lock() else {
                return Err((StatusCode::Aborted, "state poisoned".into()));
            };
            if st.restarting {
                return Err((StatusCode::Aborted, "Restart already scheduled".into()));
            }
            st.restarting = true;
        }
        let delay = Duration::from_secs(rand::random::<u64>() % 10 + 2);
        self.back_to_provisioning(
            delay,
            Report::Reprovisioning {
                index: self.spec.index,
            },
        );
        to_value(&MessageReply {
            message: format!("Restarting after {}s", delay.as_secs()),
        })
    }

    /// After `delay`, restarts into provisioning mode with no key, certificate or
    /// configuration, reports `report` and announces itself.
    fn back_to_provisioning(self: &Arc<Self>, delay: Duration, report: Report) {
        let s = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            s.publish_event_as(EventType::Shutdown, "server").await;
            if let Ok(mut st) = s.state.lock() {
                *st = State {
                    provisioning: true,
                    collective: subject::PROVISIONING_COLLECTIVE.into(),
                    seen_first: st.seen_first,
                    fell_back: st.fell_back || matches!(report, Report::FellBack { .. }),
                    version: st.version.clone(),
                    ..Default::default()
                };
            }
            let _ = s.reports.send(report);
            let _ = s.resubscribe.send(subject::PROVISIONING_COLLECTIVE.into());
        });
    }
}
