//! The work queue's locks stay usable after a panic.
//!
//! A panic while a lock is held (a bug, or a dependency's) poisons it. The queue used to give
//! up on every later `lock()` that failed: it queued nothing more, started nothing and said
//! nothing, so the member stopped provisioning silently. Now the next user takes the lock as
//! the panic left it (the queue's maps are bookkeeping, rebuilt by the next discovery if they
//! are off), clears the poison, and says so once per panic: an error line and
//! `choria_provisioner_poisoned_locks`.

use std::sync::{Mutex, MutexGuard};

use crate::metrics::Metrics;

/// `mutex` locked, recovered from poisoning if a panic left it so; `name` says which lock in
/// the log line and the metric.
pub(super) fn lock<'a, T>(mutex: &'a Mutex<T>, name: &str, metrics: &Metrics) -> MutexGuard<'a, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => {
            tracing::error!(
                lock = name,
                "a panic left the work queue's lock poisoned; carrying on with what it holds"
            );
            metrics
                .poisoned_locks
                .with_label_values(&[metrics.site(), name])
                .inc();
            mutex.clear_poison();
            poisoned.into_inner()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn poison(m: &Arc<Mutex<Vec<u32>>>) {
        let m = m.clone();
        let _ = std::thread::spawn(move || {
            let mut g = m.lock().unwrap();
            g.push(2);
            panic!("poisons the lock");
        })
        .join();
    }

    #[test]
    fn a_poisoned_lock_is_taken_as_it_was_left_once_counted_and_healed() {
        let metrics = Metrics::new("t");
        let m = Arc::new(Mutex::new(vec![1]));
        poison(&m);
        assert!(m.is_poisoned());

        lock(&m, "entries", &metrics).push(3);
        assert_eq!(*lock(&m, "entries", &metrics), vec![1, 2, 3]);
        assert!(!m.is_poisoned());
        let text = metrics.render();
        assert!(
            text.contains("choria_provisioner_poisoned_locks{lock=\"entries\",site=\"t\"} 1"),
            "{text}"
        );
    }
}
