//! The process's memory habits that are not the allocator's defaults: no transparent huge
//! pages, and freed memory kept a while before it goes back to the kernel.
//!
//! mimalloc (v3) asks the kernel for transparent huge pages on its arenas and hands freed
//! memory back in small pieces a second later; touching such a piece again faults in a whole
//! 2 MiB page, which the kernel zeroes first. In a capped member's profile that zeroing
//! (`clear_page_erms` under `do_huge_pmd_anonymous_page`) was about a tenth of its CPU while
//! its resident memory stayed near 60 MB (benches/BENCHMARKS.md). Without huge pages a refault
//! zeroes 4 KiB; the price is a few more TLB misses.
//!
//! Freed memory went back to the kernel a second after it was freed (mimalloc's purge delay),
//! often just before the next entries or replies needed it again, and came back as fresh
//! zeroed pages. Kept [`PURGE_DELAY_MS`] instead, a capped 5-member run of 15,000 servers
//! faulted 6.9-7.2 times per server against 7.8-8.1 (one member 1.9-2.1 against 2.3-2.5), at
//! the same peak RSS; most faults left are first touches of memory the process grows into.
//! An operator can still choose with mimalloc's own `MIMALLOC_PURGE_DELAY`.

use std::ffi::c_long;

/// How long memory freed and not used again stays with the allocator before it is purged.
pub const PURGE_DELAY_MS: c_long = 10_000;

/// `mi_option_purge_delay`: its place in `mi_option_e`, the same in mimalloc's v2 and v3
/// headers (the bindings name only some options); a test checks it against the variable.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The variable mimalloc reads that option from at start.
const PURGE_DELAY_VAR: &str = "MIMALLOC_PURGE_DELAY";

/// Turns transparent huge pages off for this process, including memory mapped already (the
/// kernel checks the flag at each fault). Best effort: a kernel without the call keeps them.
pub fn no_transparent_huge_pages() -> bool {
    // SAFETY: PR_SET_THP_DISABLE takes no pointers; it sets one flag of this process
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0 }
}

/// Keeps freed memory [`PURGE_DELAY_MS`] before mimalloc gives it back, unless the operator
/// set `MIMALLOC_PURGE_DELAY` (then theirs stands). Says whether it set ours.
pub fn keep_freed_memory_a_while() -> bool {
    if std::env::var_os(PURGE_DELAY_VAR).is_some() {
        return false;
    }
    // SAFETY: sets one integer option; mimalloc reads options at each purge decision
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    true
}

/// The purge delay in force, in milliseconds (-1: never).
pub fn purge_delay_ms() -> c_long {
    // SAFETY: reads one integer option
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHILD: &str = "PROVISIONER_MEMORY_TEST_CHILD";

    #[test]
    fn the_option_is_the_one_mimalloc_reads_from_its_variable() {
        // run again as a child with the variable set: the option must hold its value
        if std::env::var_os(CHILD).is_some() {
            assert_eq!(purge_delay_ms(), 1234);
            assert!(!keep_freed_memory_a_while(), "the operator's value stands");
            assert_eq!(purge_delay_ms(), 1234);
            return;
        }
        let status = std::env::current_exe()
            .map(std::process::Command::new)
            .map(|mut c| {
                c.args([
                    "memory::tests::the_option_is_the_one_mimalloc_reads_from_its_variable",
                    "--exact",
                    "--test-threads=1",
                ])
                .env(CHILD, "1")
                .env(PURGE_DELAY_VAR, "1234")
                .status()
            });
        match status {
            Ok(Ok(s)) => assert!(s.success(), "child: {s}"),
            other => panic!("could not run the child: {other:?}"),
        }
    }

    #[test]
    fn ours_is_set_without_the_variable() {
        if std::env::var_os(PURGE_DELAY_VAR).is_some() {
            return;
        }
        assert!(keep_freed_memory_a_while());
        assert_eq!(purge_delay_ms(), PURGE_DELAY_MS);
    }
}
