//! A commit group: pages that arrive back to back, handed to the sinks one by one and committed
//! together, with one sink `fsync` and one checkpoint flush for them all.
//!
//! On a 2-core machine collecting from nginx, two thirds of a Graph page's time went to the file
//! sink's `fsync` of the page, one sixth to the checkpoint's flush (session 11's trace of the
//! static benchmark): the disk syncs two large writes faster than two that wait for each other.
//! So a page whose next page is already fetched and made ready is delivered unsynced
//! ([`Batch::sync`] `false`) and not committed; the group's last page is delivered synced (or the
//! sinks are flushed when it has no rows), and then one commit records them all. The checkpoint
//! is still never durable before its rows are. A crash delivers again at most one group's
//! pages; with `commit_group = 1` (the default), or when pages do not arrive back to back, every
//! page is committed on its own.
//!
//! Measured (session 11, static benchmark): groups of 4 against single pages gained 1 to 11 %
//! on the idle machine and −9 to +6 % while other builds loaded it: the parse had become about
//! as fast as the sink, so pages were seldom in before the page ahead of them was settled (226 of
//! 1,404 deliveries went unsynced in one traced run). Too little to make a crash repeat up to
//! four pages instead of one by default; they are for storage whose `fsync` is slow, turned on
//! with `EngineOptions::commit_group`.

use super::*;

/// Whether the page being settled may leave its sync and its commit to the page after it: the
/// slice goes on to that page (`goes_on`), the group, with this page, stays under `limit`
/// pages, and the next page is already in and made ready (`next_ready`, asked last: with
/// groups off it is never asked).
pub(super) fn defer_commit(
    goes_on: bool,
    (pending, limit): (usize, usize),
    next_ready: impl FnOnce() -> bool,
) -> bool {
    goes_on && pending + 1 < limit && next_ready()
}

/// The pages delivered and not yet committed, and what they add to the commit.
#[derive(Default)]
pub(super) struct Group {
    /// Each page's URL and rows, for what follows the commit (spool, metrics, hook).
    pub(super) pages: Vec<(String, u64)>,
    /// Rows dropped by the time filter.
    pub(super) dropped: u64,
    /// Rows delivered, for the identity index (only when re-reading is on).
    pub(super) seen: Vec<SeenEntry>,
    /// Rows delivered whose details are to be fetched.
    pub(super) details: Vec<DetailEntry>,
    /// The checkpoint's marks after each page, in order: applied only at the commit, so that
    /// the checkpoint a job resumes or reschedules from is always one committed.
    pub(super) marks: Vec<Mark>,
    /// The slice's pages and rows after the group's last page.
    pub(super) totals: (u64, u64),
    /// A page of the group went to the sinks unsynced, and no synced batch has followed it.
    pub(super) unsynced: bool,
    /// Where the sinks' files stood after each page ([`SinkPosition`]), recorded with the
    /// commit.
    pub(super) positions: Vec<SinkPosition>,
}

impl Group {
    /// Pages in the group.
    pub(super) fn len(&self) -> usize {
        self.pages.len()
    }

    /// Adds a settled page (`delivered`: whether its batch went to the sinks synced, which
    /// makes every page before it durable too, and where their files then stood; a page without
    /// rows sends nothing and changes nothing).
    pub(super) fn add(
        &mut self,
        url: &str,
        page: PageAdds,
        (mark, totals): (Mark, (u64, u64)),
        delivered: Option<(bool, Vec<SinkPosition>)>,
    ) {
        self.pages.push((url.to_owned(), page.rows));
        self.marks.push(mark);
        self.totals = totals;
        self.dropped += page.dropped;
        self.seen.extend(page.seen);
        self.details.extend(page.details);
        if let Some((synced, positions)) = delivered {
            self.unsynced = !synced;
            self.positions.extend(positions);
        }
    }

    /// Rows of the group's pages.
    pub(super) fn rows(&self) -> u64 {
        self.pages.iter().map(|(_, n)| n).sum()
    }
}

/// What one page adds to the commit.
pub(super) struct PageAdds {
    /// Events delivered.
    pub(super) rows: u64,
    /// Rows dropped by the time filter.
    pub(super) dropped: u64,
    /// Rows delivered, for the identity index (only when re-reading is on).
    pub(super) seen: Vec<SeenEntry>,
    /// Rows delivered whose details are to be fetched.
    pub(super) details: Vec<DetailEntry>,
}

/// Makes what the sinks were given unsynced durable (their [`Sink::flush`]), when a group ends
/// on a page that sent them nothing synced.
///
/// [`Sink::flush`]: crate::sink::Sink::flush
pub(super) async fn flush_sinks(env: &FetcherEnv) -> Result<(), FetchError> {
    let flushes = env.sinks.iter().map(|s| s.send(FlushSink));
    for r in futures_util::future::join_all(flushes).await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(FetchError::Sink(e)),
            Err(e) => return Err(FetchError::SinkGone(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adds(rows: u64) -> PageAdds {
        PageAdds {
            rows,
            dropped: 1,
            seen: Vec::new(),
            details: Vec::new(),
        }
    }

    #[test]
    fn a_page_waits_for_the_next_only_when_it_is_in_and_the_group_has_room() {
        let yes = || true;
        assert!(defer_commit(true, (0, 4), yes));
        assert!(defer_commit(true, (2, 4), yes));
        // The fourth page of a group of at most four closes it.
        assert!(!defer_commit(true, (3, 4), yes));
        // Every page on its own, and the pages ahead are not even looked at.
        assert!(!defer_commit(true, (0, 1), || panic!(
            "asked with groups off"
        )));
        // The next page is not in yet: no waiting for the network before a commit.
        assert!(!defer_commit(true, (0, 4), || false));
        // The slice ends or is re-queried: nothing follows in this group.
        assert!(!defer_commit(false, (0, 4), yes));
    }

    #[test]
    fn a_group_is_unsynced_from_an_unsynced_page_until_a_synced_one() {
        let mut g = Group::default();
        g.add(
            "a",
            adds(5),
            (Mark::Unchanged, (1, 5)),
            Some((false, Vec::new())),
        );
        assert!(g.unsynced);
        // A page without rows sent nothing: the group stays unsynced.
        g.add("b", adds(0), (Mark::Unchanged, (2, 5)), None);
        assert!(g.unsynced);
        g.add(
            "c",
            adds(7),
            (Mark::Unchanged, (3, 12)),
            Some((true, Vec::new())),
        );
        assert!(!g.unsynced);
        assert_eq!((g.len(), g.rows(), g.dropped), (3, 12, 3));
        assert_eq!((g.marks.len(), g.totals), (3, (3, 12)));
    }
}
