//! The global allocator of the binaries (`msgtrace` and the benchmark), set with
//! [`binary_allocator!`](crate::binary_allocator). The library itself never sets one: a host that
//! embeds msgtrace keeps its own, and can leave mimalloc out with `default-features = false`.
//!
//! Why: profiles of the engine showed glibc `malloc`/`free` at 40 to 65 % of the engine thread's
//! CPU, most of it `malloc_consolidate` when a page's many small allocations are freed. mimalloc
//! (feature `mimalloc`, on by default) builds from one C file with the C compiler that `ring`
//! already needs. Figures in docs/benchmarks.md.

/// The allocator type.
pub use mimalloc::MiMalloc;

/// Tunes mimalloc for a process that frees a page's worth of memory at a time: arena memory is
/// committed on demand instead of eagerly (eager commit cost 40 MiB more peak RSS on a
/// 1,000,000-row collection for no CPU gain), and freed memory is given back to the system at
/// once instead of after a delay (with the delay, RSS behind an `http` sink reached 72 MiB against
/// 30 MiB with glibc; at once: 33 MiB, for about 2 s more system CPU per 1,000,000 rows, still
/// well under glibc's total). It must run before the first allocation creates the first arena,
/// that is before `main` (the Rust runtime allocates before it):
/// [`binary_allocator!`](crate::binary_allocator) registers it as an ELF constructor on Linux.
///
/// A page's rows are parsed on one thread and freed on another (the fetcher's, once the sinks have
/// the page). mimalloc v3 hands a full page of small blocks to no thread ("abandons" it), and by
/// default each block freed into it from another thread then goes through a slow path that
/// takes and gives back ownership of the page. With `page_reclaim_on_free = 1` the freeing thread
/// takes the page over at its first such free and frees the rest of its blocks locally. Under
/// callgrind this cut the engine's instructions per Graph row by 7 % (22,100 to 20,500; the
/// parse-only baseline: 17,500), RSS within earlier runs' range (docs/benchmarks.md item 12).
///
/// An option set in the environment (`MIMALLOC_ARENA_EAGER_COMMIT`, `MIMALLOC_PURGE_DELAY`,
/// `MIMALLOC_PAGE_RECLAIM_ON_FREE`) wins over this tuning, as mimalloc documents for its defaults.
pub extern "C" fn tune() {
    // Option indexes, the same in mimalloc v2 and v3.
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // mimalloc v3 only: v2 numbers its later options differently (checked by version below).
    const PAGE_RECLAIM_ON_FREE: libmimalloc_sys::mi_option_t = 35;
    // SAFETY: returns the linked allocator's version (major * 10000 + minor * 100 + patch);
    // does not allocate.
    let v3 = unsafe { libmimalloc_sys::mi_version() } >= 30000;
    let options = [
        (ARENA_EAGER_COMMIT, c"MIMALLOC_ARENA_EAGER_COMMIT", 0, true),
        (PURGE_DELAY, c"MIMALLOC_PURGE_DELAY", 0, true),
        (
            PAGE_RECLAIM_ON_FREE,
            c"MIMALLOC_PAGE_RECLAIM_ON_FREE",
            1,
            v3,
        ),
    ];
    for (option, variable, value, applies) in options {
        if !applies {
            continue;
        }
        // SAFETY: `getenv` with a NUL-terminated name, before `main` (no thread can be changing
        // the environment); `mi_option_set` sets an option of the allocator linked into this
        // binary. Neither allocates.
        unsafe {
            if libc::getenv(variable.as_ptr()).is_null() {
                libmimalloc_sys::mi_option_set(option, value);
            }
        }
    }
}

/// Sets mimalloc, tuned, as the global allocator of the binary it is invoked in (at the crate's
/// top level). Expands to nothing without the `mimalloc` feature.
#[macro_export]
macro_rules! binary_allocator {
    () => {
        #[global_allocator]
        static ALLOCATOR: $crate::allocator::MiMalloc = $crate::allocator::MiMalloc;

        // Runs before `main` and before the runtime's first allocation (see `allocator::tune`).
        #[cfg(target_os = "linux")]
        #[used]
        #[link_section = ".init_array"]
        static TUNE_ALLOCATOR: extern "C" fn() = $crate::allocator::tune;
    };
}
