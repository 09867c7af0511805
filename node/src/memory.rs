//! The process's memory habit that is not the allocator's default: no transparent huge pages.
//!
//! mimalloc (v3) asks the kernel for transparent huge pages on its arenas and hands freed
//! memory back in small pieces a second later; touching such a piece again faults in a whole
//! 2 MiB page, which the kernel zeroes first. In a capped member's profile that zeroing
//! (`clear_page_erms` under `do_huge_pmd_anonymous_page`) was about a tenth of its CPU while
//! its resident memory stayed near 60 MB (benches/BENCHMARKS.md). Without huge pages a refault
//! zeroes 4 KiB; the price is a few more TLB misses.

/// Turns transparent huge pages off for this process, including memory mapped already (the
/// kernel checks the flag at each fault). Best effort: a kernel without the call keeps them.
pub fn no_transparent_huge_pages() -> bool {
    // SAFETY: PR_SET_THP_DISABLE takes no pointers; it sets one flag of this process
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0 }
}
