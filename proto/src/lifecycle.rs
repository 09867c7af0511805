//! Lifecycle events: the JSON notes Choria components publish when they start, stop or get
//! provisioned, on `choria.lifecycle.event.<type>.<component>`.
//!
//! Upstream accepts two protocol spellings (`io.choria.lifecycle.v1.startup` and the older
//! `choria:lifecycle:startup:1`) and a CloudEvents wrapping whose `data` is the event; so do we.

use serde::{Deserialize, Serialize};

use crate::error::{Layer, ProtoError};

/// Component name servers in provisioning mode publish their events with.
pub const PROVISION_MODE_COMPONENT: &str = "provision_mode_server";

/// Events larger than this are not lifecycle events.
const MAX_EVENT_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Startup,
    Shutdown,
    Provisioned,
    Alive,
    Upgraded,
    Governor,
}

impl EventType {
    pub fn as_str(&self) -> &'static str {
        match self {
            EventType::Startup => "startup",
            EventType::Shutdown => "shutdown",
            EventType::Provisioned => "provisioned",
            EventType::Alive => "alive",
            EventType::Upgraded => "upgraded",
            EventType::Governor => "governor",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "startup" => EventType::Startup,
            "shutdown" => EventType::Shutdown,
            "provisioned" => EventType::Provisioned,
            "alive" => EventType::Alive,
            "upgraded" => EventType::Upgraded,
            "governor" => EventType::Governor,
            _ => return None,
        })
    }
}

/// A lifecycle event in upstream's "choria" format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub protocol: String,
    pub id: String,
    pub identity: String,
    pub component: String,
    pub timestamp: i64,
    /// Only startup events carry a version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl Event {
    pub fn new(kind: EventType, identity: &str, component: &str, version: Option<&str>) -> Self {
        Event {
            protocol: format!("io.choria.lifecycle.v1.{}", kind.as_str()),
            id: crate::new_request_id(),
            identity: identity.into(),
            component: component.into(),
            timestamp: crate::unix_now(),
            version: match kind {
                EventType::Startup => Some(version.unwrap_or_default().to_string()),
                _ => None,
            },
        }
    }

    /// The event's type, from its protocol field.
    pub fn kind(&self) -> Result<EventType, ProtoError> {
        let name = self
            .protocol
            .strip_prefix("io.choria.lifecycle.v1.")
            .or_else(|| {
                self.protocol
                    .strip_prefix("choria:lifecycle:")
                    .and_then(|r| r.strip_suffix(":1"))
            })
            .unwrap_or_default();
        EventType::parse(name).ok_or_else(|| {
            ProtoError::invalid(
                Layer::Lifecycle,
                "protocol",
                format!("unknown protocol {:?}", truncate(&self.protocol)),
            )
        })
    }

    /// The subject this event is published on.
    pub fn subject(&self) -> Result<String, ProtoError> {
        Ok(crate::subject::lifecycle_event(
            self.kind()?.as_str(),
            &self.component,
        ))
    }

    pub fn to_json(&self) -> Result<Vec<u8>, ProtoError> {
        serde_json::to_vec(self).map_err(|source| ProtoError::Encode {
            layer: Layer::Lifecycle,
            source,
        })
    }

    /// Parses an event in either upstream format and checks its type and identity.
    pub fn from_json(data: &[u8]) -> Result<Self, ProtoError> {
        if data.len() > MAX_EVENT_BYTES {
            return Err(ProtoError::invalid(Layer::Lifecycle, "event", "too large"));
        }
        let value: serde_json::Value =
            serde_json::from_slice(data).map_err(|source| ProtoError::Json {
                layer: Layer::Lifecycle,
                source,
            })?;
        let is_cloud_event = value.get("specversion").is_some()
            && value.get("source").and_then(|s| s.as_str()) == Some("io.choria.lifecycle");
        let inner = if is_cloud_event {
            value.get("data").cloned().ok_or_else(|| {
                ProtoError::invalid(Layer::Lifecycle, "data", "cloud event has no data")
            })?
        } else {
            value
        };
        let event: Event = serde_json::from_value(inner).map_err(|source| ProtoError::Json {
            layer: Layer::Lifecycle,
            source,
        })?;
        event.kind()?;
        if !crate::subject::is_valid_identity(&event.identity) {
            return Err(ProtoError::invalid(
                Layer::Lifecycle,
                "identity",
                format!("{:?} is not a valid identity", truncate(&event.identity)),
            ));
        }
        Ok(event)
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_round_trip_and_subject() {
        let e = Event::new(
            EventType::Startup,
            "n1.example.net",
            PROVISION_MODE_COMPONENT,
            Some("0.29.4"),
        );
        let j = e.to_json().unwrap();
        let back = Event::from_json(&j).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.kind().unwrap(), EventType::Startup);
        assert_eq!(
            e.subject().unwrap(),
            "choria.lifecycle.event.startup.provision_mode_server"
        );
    }

    #[test]
    fn legacy_protocol_and_cloudevents_are_accepted() {
        let legacy = br#"{"protocol":"choria:lifecycle:startup:1","id":"x","identity":"n1","component":"c","timestamp":1,"version":"1"}"#;
        assert_eq!(
            Event::from_json(legacy).unwrap().kind().unwrap(),
            EventType::Startup
        );
        let ce = br#"{"specversion":"1.0","source":"io.choria.lifecycle","type":"io.choria.lifecycle.v1.shutdown","data":{"protocol":"io.choria.lifecycle.v1.shutdown","id":"x","identity":"n1","component":"c","timestamp":1}}"#;
        assert_eq!(
            Event::from_json(ce).unwrap().kind().unwrap(),
            EventType::Shutdown
        );
    }

    #[test]
    fn garbage_is_rejected() {
        for bad in [
            &b"nope"[..],
            br#"{"protocol":"io.choria.lifecycle.v1.nosuch","id":"x","identity":"n1","component":"c","timestamp":1}"#,
            br#"{"protocol":"io.choria.lifecycle.v1.startup","id":"x","identity":"n1.*","component":"c","timestamp":1}"#,
            br#"{"protocol":"io.choria.lifecycle.v1.startup"}"#,
            br#"[]"#,
        ] {
            assert!(Event::from_json(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
