//! Page-sized byte buffers (response bodies, a page's NDJSON), reused through a small
//! process-wide pool. A page's buffer is megabytes, and the binary's allocator gives blocks that
//! large back to the system as soon as they are freed (`purge_delay = 0`, `src/allocator.rs`), so
//! a fresh buffer per page was mapped and faulted in again for every page: about 0.09 page faults
//! per Graph row for the response body alone.

use std::sync::Mutex;

/// The most bytes of buffer capacity the pool keeps while nobody uses them: two pages' body and
/// NDJSON of 5000 Graph rows. In the benchmark 8 MiB saved as many page faults as 16 MiB, and the
/// engine's settled RSS read 17.7 to 19.7 MiB against 21.3 to 22.9.
const POOL_BYTES: usize = 8 << 20;

/// The process's pool.
static POOL: Pool = Pool::new(POOL_BYTES);

/// An empty buffer with room for at least `capacity` bytes: one given back, or a new one.
pub fn take(capacity: usize) -> Vec<u8> {
    POOL.take(capacity)
}

/// Gives a buffer back for [`take`] (emptied); it is freed instead when the pool holds enough.
pub fn give(buf: Vec<u8>) {
    POOL.give(buf)
}

/// Gives back the buffer behind `bytes` (a response body once parsed) when nothing else shares
/// it; otherwise it is only dropped.
pub fn give_bytes(bytes: bytes::Bytes) {
    POOL.give_bytes(bytes)
}

/// Empty buffers kept for reuse, at most `limit` bytes of capacity in all.
struct Pool {
    limit: usize,
    buffers: Mutex<Vec<Vec<u8>>>,
}

impl Pool {
    const fn new(limit: usize) -> Pool {
        Pool {
            limit,
            buffers: Mutex::new(Vec::new()),
        }
    }

    /// The smallest kept buffer with room for `capacity` bytes, or a new one. A kept buffer too
    /// small is left for a smaller request: growing it would allocate anew all the same, and copy
    /// the old block (the allocator does not know that it is empty).
    fn take(&self, capacity: usize) -> Vec<u8> {
        let mut buffers = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
        let fit = buffers
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= capacity)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        match fit {
            Some(i) => buffers.swap_remove(i),
            None => {
                drop(buffers);
                Vec::with_capacity(capacity)
            }
        }
    }

    fn give(&self, mut buf: Vec<u8>) {
        buf.clear();
        if buf.capacity() == 0 {
            return;
        }
        if buf.capacity() > self.limit {
            return;
        }
        // The largest buffers are kept: a page's take can use them, and a small one could
        // otherwise hold the place of every larger one for good.
        let mut buffers = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
        buffers.push(buf);
        buffers.sort_unstable_by_key(|b| std::cmp::Reverse(b.capacity()));
        let mut kept = 0;
        buffers.retain(|b| {
            kept += b.capacity();
            kept <= self.limit
        });
    }

    fn give_bytes(&self, bytes: bytes::Bytes) {
        if let Ok(unique) = bytes.try_into_mut() {
            self.give(unique.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_given_back_is_taken_again_empty_without_a_copy() {
        let pool = Pool::new(1 << 20);
        let mut buf = pool.take(1 << 16);
        buf.extend_from_slice(b"page");
        let at = buf.as_ptr();
        let body = bytes::Bytes::from(buf);
        // Shared (a sink still holds it): dropped, not pooled.
        pool.give_bytes(body.clone());
        let again = pool.take(0);
        assert!(again.capacity() == 0 && again.is_empty());
        pool.give_bytes(body);
        let again = pool.take(10);
        assert_eq!(again.as_ptr(), at, "the same buffer, not a copy");
        assert!(again.is_empty() && again.capacity() >= 1 << 16);
    }

    /// The capacities the pool keeps.
    fn capacities(pool: &Pool) -> Vec<usize> {
        pool.buffers
            .lock()
            .unwrap()
            .iter()
            .map(Vec::capacity)
            .collect()
    }

    #[test]
    fn the_pool_keeps_at_most_its_limit() {
        let pool = Pool::new(1000);
        for _ in 0..5 {
            pool.give(Vec::with_capacity(300));
        }
        let kept = capacities(&pool);
        assert_eq!(kept.len(), 3, "{kept:?}");
        assert!(kept.iter().sum::<usize>() <= 1000);
    }

    /// Regression (session 17): the pool handed out its last buffer whatever its size, so a
    /// page's lines (a body's size and more) often got a body's buffer and grew it: a new block,
    /// faulted in again, and the old one copied over first.
    #[test]
    fn a_take_gets_the_smallest_buffer_that_fits_and_never_grows_one() {
        let pool = Pool::new(1 << 20);
        let large = Vec::with_capacity(3000);
        let at = large.as_ptr();
        pool.give(large);
        pool.give(Vec::with_capacity(1000));
        let got = pool.take(2000);
        assert_eq!(
            got.as_ptr(),
            at,
            "the buffer with room, not the last one given"
        );
        // Only a smaller one kept: a new buffer, and the small one stays for a small request.
        let fresh = pool.take(2000);
        assert!(fresh.capacity() >= 2000);
        let small = pool.take(500);
        assert!(
            small.capacity() >= 1000 && small.capacity() < 2000,
            "{}",
            small.capacity()
        );
    }

    #[test]
    fn small_buffers_do_not_keep_a_larger_one_out() {
        let pool = Pool::new(1000);
        for _ in 0..5 {
            pool.give(Vec::with_capacity(200));
        }
        pool.give(Vec::with_capacity(800));
        let kept = capacities(&pool);
        assert!(kept.iter().any(|&c| c >= 800), "{kept:?}");
        assert!(kept.iter().sum::<usize>() <= 1000, "{kept:?}");
        // One larger than the whole pool is not kept at all.
        pool.give(Vec::with_capacity(5000));
        assert!(capacities(&pool).iter().all(|&c| c < 5000));
    }
}
