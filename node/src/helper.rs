//! Step 4: ask user logic what to do with the server.
//!
//! The contract is upstream's: the helper program gets a JSON document on stdin (`identity`,
//! `csr`, `ed25519_pubkey`, `inventory` as a JSON string, `jwt` claims) and answers a JSON
//! document on stdout (`defer`, `shutdown`, `msg`, `configuration`, `certificate`, `ca`,
//! `ssldir`, `key`, `action_policies`, `opa_policies`, `server_claims`, `upgrade`).
//!
//! The program runs with a timeout and an output size cap; a non-zero exit, no output, output
//! that is not the expected JSON, or a timeout is a [`HelperError`] and the server is deferred.
//! User logic can also be compiled in by implementing [`UserLogic`].

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use proto::agents::{CsrReply, Ed25519Reply};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the helper is told about a server.
#[derive(Debug, Clone, Serialize)]
pub struct HelperRequest {
    pub identity: String,
    pub csr: Option<CsrReply>,
    pub ed25519_pubkey: Option<Ed25519Reply>,
    /// The `rpcutil#inventory` reply data, as a JSON string (upstream passes it this way).
    pub inventory: String,
    /// The verified provisioning JWT claims.
    pub jwt: Option<serde_json::Map<String, Value>>,
    /// Set when the ledger holds this identity as enrolled already: a re-enrollment (the
    /// server fell back, was reprovisioned, or someone else answers in its name). User logic
    /// may refuse it (`defer` or `shutdown`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrolled_before: Option<EnrolledBefore>,
}

/// What the ledger knew of a server's earlier enrollment when it was claimed again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EnrolledBefore {
    /// Serial (or server JWT id) of the credential it holds.
    pub serial: String,
    /// The member that issued it.
    pub issued_by: String,
    /// When, Unix ms.
    pub issued_at_ms: u64,
    /// Credentials issued to this identity within `reenroll_window`.
    pub issued_in_window: usize,
}

/// What the helper decided.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct HelperResponse {
    #[serde(default, deserialize_with = "null_default")]
    pub defer: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub shutdown: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub msg: String,
    #[serde(default, deserialize_with = "null_default")]
    pub key: String,
    #[serde(default, deserialize_with = "null_default")]
    pub certificate: String,
    #[serde(default, deserialize_with = "null_default")]
    pub ca: String,
    #[serde(default, deserialize_with = "null_default")]
    pub ssldir: String,
    #[serde(default)]
    pub server_claims: Option<Value>,
    #[serde(default, deserialize_with = "null_default")]
    pub configuration: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_default")]
    pub action_policies: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_default")]
    pub opa_policies: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_default")]
    pub upgrade: String,
}

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Error)]
pub enum HelperError {
    #[error("cannot start helper {program}: {reason}")]
    Start { program: String, reason: String },
    #[error("helper timed out after {0:?}")]
    Timeout(Duration),
    #[error("helper exited with {status}: {stderr}")]
    Exit { status: String, stderr: String },
    #[error("helper wrote nothing")]
    Empty,
    #[error("helper output exceeds {0} bytes")]
    TooLarge(usize),
    #[error("helper output is not a valid response: {0}")]
    Decode(String),
    #[error("cannot encode helper input: {0}")]
    Encode(String),
    #[error("helper: {0}")]
    Other(String),
}

/// User logic deciding a server's configuration. The external program is one implementation;
/// others can be compiled in.
#[async_trait]
pub trait UserLogic: Send + Sync {
    async fn decide(&self, request: &HelperRequest) -> Result<HelperResponse, HelperError>;
}

/// Runs a helper program per server.
pub struct ExternalHelper {
    argv: Vec<String>,
    timeout: Duration,
    max_output: usize,
}

/// How much of the helper's stderr goes into an error message.
const STDERR_EXCERPT: usize = 512;

impl ExternalHelper {
    pub fn new(argv: Vec<String>, timeout: Duration, max_output: usize) -> Self {
        ExternalHelper {
            argv,
            timeout,
            max_output,
        }
    }

    async fn run(&self, input: Vec<u8>) -> Result<Vec<u8>, HelperError> {
        let (program, args) = self.argv.split_first().ok_or_else(|| HelperError::Start {
            program: String::new(),
            reason: "empty command".into(),
        })?;
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // its own process group, so a timeout also ends what it started
            .process_group(0)
            .spawn()
            .map_err(|e| HelperError::Start {
                program: program.clone(),
                reason: e.to_string(),
            })?;
        let mut group = GroupKill(child.id().and_then(|p| i32::try_from(p).ok()));

        let mut stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let max = self.max_output;

        let work = async move {
            // feed stdin while reading stdout, so a helper that answers before reading all of
            // its input cannot deadlock us
            let feed = async {
                if let Some(mut s) = stdin.take() {
                    // a helper may exit without reading stdin; that is its business
                    let _ = s.write_all(&input).await;
                    let _ = s.shutdown().await;
                }
            };
            let read_out = async {
                let mut buf = Vec::new();
                if let Some(out) = stdout {
                    let mut limited = out.take(max as u64 + 1);
                    limited
                        .read_to_end(&mut buf)
                        .await
                        .map_err(|e| HelperError::Other(format!("reading stdout: {e}")))?;
                }
                Ok::<_, HelperError>(buf)
            };
            let read_err = async {
                // keep the start, drain the rest: a helper blocked on a full stderr pipe
                // would otherwise only end at the timeout
                let mut kept = Vec::new();
                if let Some(mut err) = stderr {
                    let mut chunk = vec![0u8; 8192];
                    while let Ok(n) = err.read(&mut chunk).await {
                        if n == 0 {
                            break;
                        }
                        let room = (64 * 1024usize).saturating_sub(kept.len()).min(n);
                        kept.extend_from_slice(&chunk[..room]);
                    }
                }
                kept
            };
            let ((), out, err) = tokio::join!(feed, read_out, read_err);
            let out = out?;
            if out.len() > max {
                return Err(HelperError::TooLarge(max));
            }
            let status = child
                .wait()
                .await
                .map_err(|e| HelperError::Other(format!("waiting: {e}")))?;
            if !status.success() {
                let text = String::from_utf8_lossy(&err);
                return Err(HelperError::Exit {
                    status: status.to_string(),
                    stderr: text.trim().chars().take(STDERR_EXCERPT).collect(),
                });
            }
            if out.iter().all(|b| b.is_ascii_whitespace()) {
                return Err(HelperError::Empty);
            }
            Ok(out)
        };
        // on timeout the child is dropped and killed (kill_on_drop), its group with it
        let result = tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| HelperError::Timeout(self.timeout))?;
        if result.is_ok() {
            // it exited by itself; its group id may be reused from now on
            group.0 = None;
        }
        result
    }
}

/// Kills a helper's process group when dropped: a helper that hangs in a child of its own
/// (a shell script waiting on a command) leaves nothing running after its timeout.
struct GroupKill(Option<i32>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.filter(|p| *p > 1) {
            // SAFETY: killpg takes plain integers and touches no memory; a group that is gone
            // already gives ESRCH, which is fine
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }
}

#[async_trait]
impl UserLogic for ExternalHelper {
    async fn decide(&self, request: &HelperRequest) -> Result<HelperResponse, HelperError> {
        let input = serde_json::to_vec(request).map_err(|e| HelperError::Encode(e.to_string()))?;
        let out = self.run(input).await?;
        parse_response(&out)
    }
}

/// Decodes helper output. Configuration values must be strings, as upstream requires.
pub fn parse_response(out: &[u8]) -> Result<HelperResponse, HelperError> {
    serde_json::from_slice(out).map_err(|e| HelperError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &std::path::Path, name: &str, body: &str) -> String {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p.to_string_lossy().into_owned()
    }

    fn request() -> HelperRequest {
        HelperRequest {
            identity: "n1.example.net".into(),
            csr: None,
            ed25519_pubkey: None,
            inventory: "{\"agents\":[]}".into(),
            jwt: None,
            enrolled_before: None,
        }
    }

    fn helper(path: String, timeout_ms: u64, max: usize) -> ExternalHelper {
        ExternalHelper::new(vec![path], Duration::from_millis(timeout_ms), max)
    }

    #[tokio::test]
    async fn good_helper_sees_input_and_answers() {
        let d = tempfile::tempdir().unwrap();
        // echo the identity back in the configuration to prove stdin arrived
        let p = script(
            d.path(),
            "h",
            r#"id=$(sed -e 's/.*"identity":"\([^"]*\)".*/\1/'); printf '{"defer":false,"msg":"ok","configuration":{"identity":"%s"},"action_policies":null}' "$id""#,
        );
        let r = helper(p, 5000, 1024).decide(&request()).await.unwrap();
        assert_eq!(r.configuration["identity"], "n1.example.net");
        assert_eq!(r.msg, "ok");
        assert!(r.action_policies.is_empty());
    }

    #[tokio::test]
    async fn failure_modes_are_errors() {
        let d = tempfile::tempdir().unwrap();
        type Check = fn(&HelperError) -> bool;
        let cases: Vec<(&str, &str, Check)> = vec![
            (
                "exit",
                "echo boom >&2; exit 3",
                |e| matches!(e, HelperError::Exit { stderr, .. } if stderr == "boom"),
            ),
            ("garbage", "echo 'this is not json'", |e| {
                matches!(e, HelperError::Decode(_))
            }),
            ("empty", "true", |e| matches!(e, HelperError::Empty)),
            ("slow", "sleep 5; echo '{}'", |e| {
                matches!(e, HelperError::Timeout(_))
            }),
            ("big", "head -c 5000 /dev/zero | tr '\\0' 'a'", |e| {
                matches!(e, HelperError::TooLarge(_))
            }),
            ("nonstring", r#"echo '{"configuration":{"a":1}}'"#, |e| {
                matches!(e, HelperError::Decode(_))
            }),
            (
                "megabytes",
                "head -c 8000000 /dev/zero | tr '\\0' 'a'",
                |e| matches!(e, HelperError::TooLarge(_)),
            ),
            // a flood on stderr is drained, so the exit is seen, not a timeout
            (
                "stderr_flood",
                "head -c 8000000 /dev/zero | tr '\\0' 'e' >&2; exit 4",
                |e| matches!(e, HelperError::Exit { stderr, .. } if stderr.len() <= STDERR_EXCERPT),
            ),
        ];
        for (name, body, check) in cases {
            let p = script(d.path(), name, body);
            let started = std::time::Instant::now();
            let err = helper(p, 500, 1024).decide(&request()).await.unwrap_err();
            assert!(check(&err), "{name}: {err}");
            assert!(
                started.elapsed() < Duration::from_secs(4),
                "{name} not cut off"
            );
        }
        let missing = helper("/nonexistent/helper".into(), 500, 1024)
            .decide(&request())
            .await
            .unwrap_err();
        assert!(matches!(missing, HelperError::Start { .. }));
    }

    #[test]
    fn deeply_nested_output_is_a_decode_error() {
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        let in_field = format!(r#"{{"configuration":{{}},"server_claims":{deep}}}"#);
        for out in [deep.as_str(), in_field.as_str()] {
            assert!(matches!(
                parse_response(out.as_bytes()),
                Err(HelperError::Decode(_))
            ));
        }
    }

    #[tokio::test]
    async fn a_timed_out_helper_leaves_no_children_behind() {
        let d = tempfile::tempdir().unwrap();
        let pidfile = d.path().join("child.pid");
        let p = script(
            d.path(),
            "forks",
            &format!("sleep 30 & echo $! > {}; wait", pidfile.display()),
        );
        let err = helper(p, 500, 1024).decide(&request()).await.unwrap_err();
        assert!(matches!(err, HelperError::Timeout(_)), "{err}");
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        let proc_dir = std::path::PathBuf::from(format!("/proc/{}", pid.trim()));
        // killed at once; the poll only waits for the kernel to reap it
        let mut gone = false;
        for _ in 0..50 {
            let zombie_or_gone = std::fs::read_to_string(proc_dir.join("stat"))
                .map(|st| st.split(' ').nth(2) == Some("Z"))
                .unwrap_or(true);
            if zombie_or_gone {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(gone, "the helper's child {} is still running", pid.trim());
    }

    #[test]
    fn request_matches_upstream_shape() {
        let v = serde_json::to_value(request()).unwrap();
        for k in ["identity", "csr", "ed25519_pubkey", "inventory", "jwt"] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert!(v["inventory"].is_string());
    }
}
