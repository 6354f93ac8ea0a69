//! What one query's next links may do before they are taken for a server's loop: each link of a
//! query is followed once, and a query has a bounded number of pages, and of empty pages in a
//! row. A link that breaks a rule is a poisoned link, like one that keeps failing: the fetcher
//! abandons it and re-queries the slice up to the oldest row delivered.
//!
//! Without it, a two-page cycle (A → B → A) delivered the same 200 rows fifty times a minute,
//! and endless distinct links to empty pages ran a job forever.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};

/// The bounds of one query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkLimits {
    /// Pages one query may have. Graph's largest query (10 days) of a tenant with 10 million
    /// rows a day is 20,000 pages of 5000.
    pub max_pages: u64,
    /// Empty pages with a next link, one after the other. A service may answer a few while it
    /// gathers rows; a hundred is a loop.
    pub max_empty_in_a_row: u32,
}

impl Default for LinkLimits {
    fn default() -> Self {
        LinkLimits {
            max_pages: 50_000,
            max_empty_in_a_row: 100,
        }
    }
}

/// Why a next link is not followed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Poisoned {
    /// The link leads to a page this query had already (a cycle).
    #[error("the next link leads back to a page this query already had (a loop)")]
    Revisited,
    /// The query reached [`LinkLimits::max_pages`].
    #[error("the query reached {0} pages without an end")]
    TooManyPages(u64),
    /// [`LinkLimits::max_empty_in_a_row`] empty pages in a row.
    #[error("{0} empty pages in a row, each with a next link")]
    EmptyPages(u32),
}

/// The links one query followed (as 64-bit hashes: a collision costs a re-query, never a row).
#[derive(Debug)]
pub struct LinkGuard {
    limits: LinkLimits,
    visited: HashSet<u64>,
    pages: u64,
    empty_in_a_row: u32,
}

fn hash(url: &str) -> u64 {
    let mut h = DefaultHasher::new();
    url.hash(&mut h);
    h.finish()
}

impl LinkGuard {
    /// A guard for a query whose first page is `url`.
    pub fn new(limits: LinkLimits, url: &str) -> LinkGuard {
        let mut guard = LinkGuard {
            limits,
            visited: HashSet::new(),
            pages: 0,
            empty_in_a_row: 0,
        };
        guard.restart(url);
        guard
    }

    /// A new query (a re-query) starts at `url`: the links before it are forgotten.
    pub fn restart(&mut self, url: &str) {
        self.visited.clear();
        self.visited.insert(hash(url));
        self.pages = 0;
        self.empty_in_a_row = 0;
    }

    /// A page of the query arrived with `rows` rows and this next link: may it be followed?
    pub fn follow(&mut self, rows: usize, next: &str) -> Result<(), Poisoned> {
        self.pages += 1;
        self.empty_in_a_row = if rows == 0 {
            self.empty_in_a_row + 1
        } else {
            0
        };
        if !self.visited.insert(hash(next)) {
            return Err(Poisoned::Revisited);
        }
        if self.pages >= self.limits.max_pages {
            return Err(Poisoned::TooManyPages(self.pages));
        }
        if self.empty_in_a_row >= self.limits.max_empty_in_a_row {
            return Err(Poisoned::EmptyPages(self.empty_in_a_row));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: LinkLimits = LinkLimits {
        max_pages: 5,
        max_empty_in_a_row: 3,
    };

    #[test]
    fn a_cycle_is_caught_at_the_first_link_back() {
        let mut g = LinkGuard::new(LIMITS, "a");
        assert_eq!(g.follow(10, "b"), Ok(()));
        assert_eq!(g.follow(10, "a"), Err(Poisoned::Revisited));
        let mut g = LinkGuard::new(LIMITS, "a");
        assert_eq!(g.follow(10, "b"), Ok(()));
        assert_eq!(g.follow(10, "c"), Ok(()));
        assert_eq!(g.follow(10, "b"), Err(Poisoned::Revisited));
    }

    #[test]
    fn pages_and_empty_runs_are_bounded() {
        let mut g = LinkGuard::new(LIMITS, "p0");
        for n in 1..5 {
            assert_eq!(g.follow(1, &format!("p{n}")), Ok(()), "{n}");
        }
        assert_eq!(g.follow(1, "p5"), Err(Poisoned::TooManyPages(5)));

        let limits = LinkLimits {
            max_pages: 100,
            ..LIMITS
        };
        let mut g = LinkGuard::new(limits, "e0");
        assert_eq!(g.follow(0, "e1"), Ok(()));
        assert_eq!(g.follow(0, "e2"), Ok(()));
        // A page with rows ends the run of empty ones.
        assert_eq!(g.follow(1, "e3"), Ok(()));
        assert_eq!(g.follow(0, "e4"), Ok(()));
        assert_eq!(g.follow(0, "e5"), Ok(()));
        assert_eq!(g.follow(0, "e6"), Err(Poisoned::EmptyPages(3)));
    }

    #[test]
    fn a_re_query_forgets_the_links_before_it() {
        let mut g = LinkGuard::new(LIMITS, "a");
        assert_eq!(g.follow(1, "b"), Ok(()));
        g.restart("a");
        assert_eq!(g.follow(1, "b"), Ok(()));
        for n in 0..3 {
            assert_eq!(g.follow(1, &format!("c{n}")), Ok(()));
        }
        assert_eq!(g.follow(1, "d"), Err(Poisoned::TooManyPages(5)));
    }
}
