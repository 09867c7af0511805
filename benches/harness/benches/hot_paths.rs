//! Criterion micro-benchmarks of the provisioner's hot paths, one per step a server costs:
//! Choria envelopes (v1 and v2) encoded and decoded, a CSR checked and signed by the built-in
//! CA, provisioning JWTs verified and server JWTs signed, a batch of ledger commands applied
//! to the RocksDB state machine, and a ledger lookup.
//!
//! Run with `cargo bench -p provisioner-bench --bench hot_paths`. These may use the
//! provisioner's crates: only the fleet simulator must stay independent of them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use proto::v1::{Filter, Insecure, Reply, Request};
use raft::command::Command;
use raft::types::{Batch, TypeConfig};

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/../../proto/testdata/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn request() -> Request {
    Request::new(
        "choria_provision",
        "provisioning",
        "choria=provisioner",
        "prov1",
        60,
        Filter::agent("choria_provision"),
        br#"{"agent":"choria_provision","action":"gencsr","data":{"token":"t0ken","cn":"sim-00001.example.net","C":"","L":"","O":"","OU":"","ST":""}}"#,
    )
}

fn envelopes(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope");
    let req = request();
    let reply_to = "provisioning.reply.prov1.0123456789abcdef";
    g.bench_function("v1 request encode", |b| {
        b.iter(|| req.encode(reply_to, "prov1", &Insecure))
    });
    let bytes = req.encode(reply_to, "prov1", &Insecure).unwrap_or_default();
    g.bench_function("v1 request decode", |b| {
        b.iter(|| proto::wire::decode_request(&bytes))
    });
    let body = br#"{"statuscode":0,"statusmsg":"OK","data":{"csr":"-----BEGIN CERTIFICATE REQUEST-----\nMIIB...\n-----END CERTIFICATE REQUEST-----\n","ssldir":"/etc/choria/ssl"}}"#;
    let reply = Reply::new(&req.envelope, "sim-00001.example.net", body);
    g.bench_function("v1 reply encode", |b| b.iter(|| reply.encode()));
    let reply_bytes = reply.encode().unwrap_or_default();
    g.bench_function("v1 reply decode", |b| {
        b.iter(|| proto::wire::decode_reply(&reply_bytes))
    });
    // a discovery pong: what a member spends on another member's server, decoded or passed over
    let pong = Reply::new(&req.envelope, "sim-00001.example.net", b"\"pong\"")
        .encode()
        .unwrap_or_default();
    g.bench_function("discovery pong decode", |b| {
        b.iter(|| proto::wire::decode_reply(&pong))
    });
    g.bench_function("discovery pong sender hint", |b| {
        b.iter(|| proto::wire::reply_sender_hint(&pong))
    });

    let issuer = match node::orgissuer::OrgIssuer::from_seed(&[7; 32]) {
        Ok(i) => Arc::new(i),
        Err(e) => panic!("issuer: {e}"),
    };
    let signer = match node::caller::CallerSigner::new(issuer, "choria=bench") {
        Ok(s) => s,
        Err(e) => panic!("caller: {e}"),
    };
    g.bench_function("v2 request encode (signed)", |b| {
        b.iter(|| proto::v2::encode_request(&req, reply_to, "prov1", &signer))
    });
    let v2 = proto::v2::encode_request(&req, reply_to, "prov1", &signer).unwrap_or_default();
    g.bench_function("v2 request decode", |b| {
        b.iter(|| proto::wire::decode_request(&v2))
    });
    g.finish();
}

fn csr(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let validity = Duration::from_secs(30 * 86_400);
    let (cert, key) = node::ca::init(
        dir.path(),
        "bench CA",
        node::ca::KeyType::EcdsaP256,
        validity,
        false,
    )
    .unwrap_or_else(|e| panic!("ca: {e}"));
    let ca = node::ca::Ca::load(&cert, &key, validity).unwrap_or_else(|e| panic!("ca: {e}"));
    let identity = "sim-00001.example.net";
    let csr_pem = {
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("key: {e}"));
        let mut params = rcgen::CertificateParams::new(vec![identity.to_string()])
            .unwrap_or_else(|e| panic!("params: {e}"));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, identity);
        params
            .serialize_request(&key)
            .and_then(|r| r.pem())
            .unwrap_or_else(|e| panic!("csr: {e}"))
    };
    let mut g = c.benchmark_group("x509");
    g.bench_function("CSR validate (P-256)", |b| {
        b.iter(|| node::csr::validate(&csr_pem, identity, &[]))
    });
    g.bench_function("CSR validate + sign (P-256 CA)", |b| {
        b.iter(|| {
            node::csr::validate(&csr_pem, identity, &[])
                .ok()
                .map(|v| ca.sign(&v.spki_der, identity))
        })
    });
    g.finish();
}

fn jwt(c: &mut Criterion) {
    let mut g = c.benchmark_group("jwt");
    let verifier = node::jwt::JwtVerifier::from_pem(fixture("provisioning-signer.pem").as_bytes())
        .unwrap_or_else(|e| panic!("verifier: {e}"));
    let token = fixture("provisioning.jwt");
    g.bench_function("provisioning JWT verify (RS256 fixture)", |b| {
        b.iter(|| verifier.verify(token.trim()))
    });
    let issuer =
        node::orgissuer::OrgIssuer::from_seed(&[9; 32]).unwrap_or_else(|e| panic!("issuer: {e}"));
    let config: BTreeMap<String, String> =
        [("plugin.security.provider".to_string(), "choria".to_string())].into();
    let server_key = hex::encode([3u8; 32]);
    g.bench_function("server JWT claims + sign (EdDSA)", |b| {
        b.iter(|| {
            issuer
                .claims(
                    "sim-00001.example.net",
                    &server_key,
                    &config,
                    None,
                    Duration::from_secs(86_400),
                    1_800_000_000,
                )
                .ok()
                .map(|claims| issuer.sign(&claims))
        })
    });
    g.finish();
}

/// The commands one provisioned server costs, for server `i` at `at_ms`.
type ServerCommands = fn(usize, u64) -> Vec<Command>;

fn claim(identity: &str, at_ms: u64) -> Command {
    Command::Claim {
        identity: identity.to_string(),
        member: "prov1".into(),
        lease_until_ms: at_ms + 30_000,
        seen_ms: at_ms,
        at_ms,
    }
}

/// The two commands one provisioned server costs from ledger rules 5, for server `i`.
fn server_commands_enroll(i: usize, at_ms: u64) -> Vec<Command> {
    let identity = format!("sim-{i:06}.example.net");
    vec![
        claim(&identity, at_ms),
        Command::Enroll {
            identity,
            member: "prov1".into(),
            serial: format!("{i:032x}"),
            fingerprint: format!("{i:064x}"),
            not_after: 1_900_000_000,
            config_digest: "0".repeat(64),
            facts: BTreeMap::new(),
            at_ms,
        },
    ]
}

/// The one command one provisioned server costs under ownership epochs (ledger rules 6).
/// Servers finish in no particular order and serials are random, as in a fleet: server `i`
/// is the `i`-th of a scattered sequence, with the facts the fleet simulator reports.
fn server_commands_finish(i: usize, at_ms: u64) -> Vec<Command> {
    // 7919 is prime to 10^7, so this visits every index below 10^7 once, out of order
    let n = (i as u64).wrapping_mul(7919) % 10_000_000;
    let scatter = u128::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
    vec![Command::Finish {
        identity: format!("sim-{n:07}.example.net"),
        member: "prov1".into(),
        epoch: 0,
        seen_ms: at_ms,
        end: raft::command::FlowEnd::Enrolled {
            credential: Some(raft::command::Issued {
                serial: format!("{scatter:032x}"),
                fingerprint: format!("{scatter:064x}"),
                not_after: 1_900_000_000,
            }),
            config_digest: "0".repeat(64),
            facts: BTreeMap::from([
                ("index".to_string(), n.to_string()),
                ("simulated".to_string(), "true".to_string()),
            ]),
        },
        at_ms,
    }]
}

/// The three commands one provisioned server cost before ledger rules 5, for server `i`.
fn server_commands(i: usize, at_ms: u64) -> Vec<Command> {
    let identity = format!("sim-{i:06}.example.net");
    vec![
        claim(&identity, at_ms),
        Command::IssueCredential {
            identity: identity.clone(),
            member: "prov1".into(),
            serial: format!("{i:032x}"),
            fingerprint: format!("{i:064x}"),
            not_after: 1_900_000_000,
            at_ms,
        },
        Command::Enrolled {
            identity,
            member: "prov1".into(),
            config_digest: "0".repeat(64),
            facts: BTreeMap::new(),
            at_ms,
        },
    ]
}

fn entry(index: u64, commands: Vec<Command>) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Batch::new(commands)),
    }
}

/// An empty store in a temporary directory (kept while the directory lives) that applies the
/// ledger rules a cluster of this build applies.
fn store_at_current_rules(
    rt: &tokio::runtime::Runtime,
) -> (tempfile::TempDir, Arc<raft::store::Store>) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let store = raft::store::Store::open(dir.path()).unwrap_or_else(|e| panic!("store: {e}"));
    let rules = entry(
        1,
        vec![Command::SetRules {
            rules: raft::state::LEDGER_RULES,
            at_ms: 0,
        }],
    );
    if rt.block_on(store.apply_to_state_machine(&[rules])).is_err() {
        panic!("cannot set the ledger rules");
    }
    (dir, store)
}

fn state_machine(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("runtime: {e}"));
    let (_dir, store) = store_at_current_rules(&rt);
    let mut g = c.benchmark_group("state machine");
    // 64 servers' commands in one entry, as a busy leader batches them
    const SERVERS: usize = 64;
    g.throughput(Throughput::Elements(SERVERS as u64));
    let mut next = 0usize;
    let mut index = 1u64;
    // (name, commands per server, apply calls the 64 servers are split into: a follower
    // applies what each commit brought, often a few servers at a time)
    let runs: [(&str, ServerCommands, usize); 4] = [
        (
            "apply batch of 64 servers (192 commands, RocksDB)",
            server_commands,
            1,
        ),
        (
            "apply batch of 64 servers (128 commands with Enroll, RocksDB)",
            server_commands_enroll,
            1,
        ),
        (
            "apply batch of 64 servers (64 Finish commands, scattered, RocksDB)",
            server_commands_finish,
            1,
        ),
        (
            "apply 64 servers' Finish in 8 applies of 8 (scattered, RocksDB)",
            server_commands_finish,
            8,
        ),
    ];
    for (name, commands, calls) in runs {
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let per_call = SERVERS / calls;
                    let entries: Vec<_> = (0..calls)
                        .map(|_| {
                            index += 1;
                            let cmds = (next..next + per_call)
                                .flat_map(|i| commands(i, 1_700_000_000_000))
                                .collect();
                            next += per_call;
                            entry(index, cmds)
                        })
                        .collect();
                    entries
                },
                |entries| {
                    entries.iter().all(|e| {
                        rt.block_on(store.apply_to_state_machine(std::slice::from_ref(e)))
                            .is_ok()
                    })
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();

    let mut g = c.benchmark_group("ledger");
    let mut ledger = raft::state::LedgerState::default();
    const RECORDS: usize = 100_000;
    for i in 0..RECORDS {
        for cmd in server_commands(i, 1_700_000_000_000) {
            let _ = ledger.apply(&cmd);
        }
    }
    let mut i = 0usize;
    g.bench_function("lookup one identity of 100,000", |b| {
        b.iter(|| {
            i = (i + 7919) % RECORDS;
            ledger.record(&format!("sim-{i:06}.example.net")).is_some()
        })
    });
    // what `/status` pays for the digest: once over the whole ledger (after a start), then
    // kept as commands apply
    let records = ledger.all_records();
    let mut serials = std::collections::HashMap::new();
    let _ = ledger.for_each_serial(&mut |a, b| {
        serials.insert(a.to_string(), b.to_string());
    });
    g.bench_function("digest of 100,000 records, computed whole", |b| {
        b.iter_batched(
            || {
                raft::state::LedgerState::restore(
                    records.clone(),
                    serials.clone(),
                    BTreeMap::new(),
                    Default::default(),
                )
            },
            |fresh| fresh.digest(),
            BatchSize::LargeInput,
        )
    });
    let _ = ledger.digest();
    let mut n = RECORDS;
    g.bench_function(
        "digest of 100,000 records, kept: one server's 3 commands, then read",
        |b| {
            b.iter(|| {
                n += 1;
                for cmd in server_commands(n, 1_700_000_000_000) {
                    let _ = ledger.apply(&cmd);
                }
                ledger.digest()
            })
        },
    );
    g.finish();
}

/// What a follower does for each server another member provisioned: decode the append that
/// carries it, append it to the synced log and apply it. Per server this is most of a
/// replica's cost (`k` in `BENCHMARKS.md`); the RPC's HTTP/2 and TLS and openraft's own work
/// come on top. Measured twice: in wall time, and in the CPU time of the thread
/// ([`ThreadCpu`]), which is what a capped member pays (a synced write's wait for the disk
/// is not).
fn replica<M: Measurement + 'static>(c: &mut Criterion<M>, group: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("runtime: {e}"));
    let (_dir, store) = store_at_current_rules(&rt);
    // about what one entry carried in the capped 5-member runs (7,500 servers, 81-90 entries)
    const SERVERS: usize = 90;
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(SERVERS as u64));
    let mut next = 0usize;
    let mut index = 1u64;
    g.bench_function(
        "a follower's append of 90 servers' Finish: decode, synced log append, apply",
        |b| {
            b.iter_batched(
                || {
                    let e = next_finish(&mut index, &mut next, SERVERS);
                    let req = openraft::raft::AppendEntriesRequest::<TypeConfig> {
                        vote: openraft::Vote::new_committed(1, 1),
                        prev_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), index - 1)),
                        entries: vec![e],
                        leader_commit: None,
                    };
                    raft::codec::encode(&req, true).unwrap_or_else(|e| panic!("encode: {e}"))
                },
                |bytes| {
                    let req: openraft::raft::AppendEntriesRequest<TypeConfig> =
                        raft::codec::decode(&bytes).unwrap_or_else(|e| panic!("decode: {e}"));
                    rt.block_on(async {
                        store.append_to_log(req.entries.clone()).is_ok()
                            && store.apply_to_state_machine(&req.entries).await.is_ok()
                    })
                },
                BatchSize::SmallInput,
            )
        },
    );
    // the log's own part of the above: encode the entry, write it and sync it (after the
    // entries above: the log takes only the next index)
    g.bench_function("synced log append of 90 servers' Finish", |b| {
        b.iter_batched(
            || vec![next_finish(&mut index, &mut next, SERVERS)],
            |entries| {
                store
                    .append_to_log(entries)
                    .unwrap_or_else(|e| panic!("append: {e}"))
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// The next log entry (after `index`) with the next `servers` servers' `Finish` (after
/// `next`), both moved on.
fn next_finish(index: &mut u64, next: &mut usize, servers: usize) -> Entry<TypeConfig> {
    *index += 1;
    let cmds = (*next..*next + servers)
        .flat_map(|i| server_commands_finish(i, 1_700_000_000_000))
        .collect();
    *next += servers;
    entry(*index, cmds)
}

fn replica_wall(c: &mut Criterion) {
    replica(c, "replica");
}

fn replica_cpu(c: &mut Criterion<ThreadCpu>) {
    replica(c, "replica, thread CPU");
}

/// The CPU time (user and system) of the thread that runs the measured routine.
struct ThreadCpu;

fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill in
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } != 0 {
        panic!("clock_gettime: {}", std::io::Error::last_os_error());
    }
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

static WALL: WallTime = WallTime;

impl Measurement for ThreadCpu {
    type Intermediate = Duration;
    type Value = Duration;
    fn start(&self) -> Duration {
        thread_cpu()
    }
    fn end(&self, started: Duration) -> Duration {
        thread_cpu().saturating_sub(started)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        // nanoseconds, as wall time's
        WALL.formatter()
    }
}

criterion_group!(benches, envelopes, csr, jwt, state_machine, replica_wall);
criterion_group! {
    name = cpu_benches;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = replica_cpu
}
criterion_main!(benches, cpu_benches);
