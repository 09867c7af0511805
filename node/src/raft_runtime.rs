//! The cluster member's Raft tasks on a thread of their own, apart from the provisioning flows.
//!
//! Every other member waits on the leader's Raft work (forwarded commands, appends,
//! replication, apply), and the leader waits on its followers' acknowledgements. On the
//! runtime the flows use, that work is one task among a member's hundred-odd flows: each wake-up
//! of Raft's core waits its turn behind whatever flows are ready, so a member short of CPU
//! delays every other member's commits, not only its own servers. Measured with members capped
//! at 0.05 core (`benches/BENCHMARKS.md`, "Raft on its own thread"): with one runtime the
//! followers were throttled in only 4-7 of every 10 scheduler periods, idle while they waited
//! for the leader; with Raft spawned here they use all of theirs.
//!
//! Raft's tasks (openraft's core, state machine worker and replication streams, the member's
//! gRPC port, the forwarding batcher) are spawned by [`raft::member::RaftMember::start`] on
//! the runtime it runs in, so starting it here puts them all on this runtime's thread; the
//! kernel then shares the CPU between that thread and the flows' threads, instead of tokio
//! queueing one behind the others.

use std::future::Future;

use tokio::runtime::{Builder, Runtime};
use tokio::task::JoinHandle;

/// Threads of the Raft runtime: one keeps Raft's tasks in order on one core, as openraft's
/// core is a single task anyway, and costs the least in cross-thread wake-ups.
const THREADS: usize = 1;

/// The runtime a cluster member's Raft tasks run on. Dropping it stops them without waiting
/// (it may be dropped inside another runtime).
pub struct RaftRuntime {
    runtime: Option<Runtime>,
}

impl RaftRuntime {
    pub fn start() -> std::io::Result<RaftRuntime> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(THREADS)
            .thread_name("raft")
            .enable_all()
            .build()?;
        Ok(RaftRuntime {
            runtime: Some(runtime),
        })
    }

    /// Runs `f` on this runtime; whatever it spawns runs here too.
    pub fn spawn<F>(&self, f: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.runtime {
            Some(r) => r.spawn(f),
            None => tokio::spawn(f),
        }
    }
}

impl Drop for RaftRuntime {
    fn drop(&mut self) {
        if let Some(r) = self.runtime.take() {
            r.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn what_runs_here_spawns_here_on_its_own_thread() {
        let rt = match RaftRuntime::start() {
            Ok(rt) => rt,
            Err(e) => panic!("no runtime: {e}"),
        };
        let caller = std::thread::current().id();
        let inner = rt
            .spawn(async move {
                let outer = std::thread::current().name().map(String::from);
                // a task spawned from here lands on this runtime's thread as well
                let spawned =
                    tokio::spawn(async { std::thread::current().name().map(String::from) })
                        .await
                        .ok()
                        .flatten();
                (outer, spawned, std::thread::current().id())
            })
            .await;
        let Ok((outer, spawned, thread)) = inner else {
            panic!("the task did not finish");
        };
        assert_eq!(outer.as_deref(), Some("raft"));
        assert_eq!(spawned.as_deref(), Some("raft"));
        assert_ne!(thread, caller);
        // dropped inside the test's runtime without a panic
        drop(rt);
    }
}
