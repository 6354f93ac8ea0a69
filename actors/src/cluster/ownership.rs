//! Which live member should collect a source: rendezvous (highest random weight) hashing.
//!
//! Every member scores every source with a hash of the pair; the source goes to the member with
//! the highest score. Each instance computes the same answer from the same member list, with no
//! coordination, and a change of membership moves only the sources it must: a member that
//! leaves gives up exactly its own sources (each to the member that scored second), a member
//! that joins takes the sources it now scores highest on, about 1/N of them, from the others.
//!
//! This decides who *should* own a source; who *does* is the claim in etcd
//! ([`super::fence`]): while two instances see different member lists (for the moment a change
//! takes to reach both), both may want a source, and only the one holding its claim collects it.
//!
//! The hash is SHA-256 (`ring`, already linked) of the two names, each preceded by its length,
//! so that the score is the same on every instance, build and release.

use ring::digest;

/// The member, of `members`, that should own `source`; `None` when there is none.
///
/// # Examples
///
/// ```
/// use msgtrace_actors::cluster::ownership::owner;
/// let members = ["collector-0".to_owned(), "collector-1".to_owned()];
/// let first = owner("contoso", &members).unwrap();
/// // Without the other member, it stays where it was.
/// let other: Vec<String> = members.iter().filter(|m| *m != first).cloned().collect();
/// assert_eq!(owner("contoso", &[first.to_owned()]), Some(first));
/// assert_ne!(owner("contoso", &other), Some(first));
/// ```
pub fn owner<'m>(source: &str, members: &'m [String]) -> Option<&'m str> {
    members
        .iter()
        .map(|m| (score(m, source), m.as_str()))
        // Equal scores (never seen with SHA-256) are broken by the name, the same everywhere.
        .max()
        .map(|(_, m)| m)
}

/// The sources, of `sources`, that `me` should own among `members` (in the order given).
pub fn share<'s>(
    sources: impl IntoIterator<Item = &'s str>,
    members: &[String],
    me: &str,
) -> Vec<&'s str> {
    sources
        .into_iter()
        .filter(|s| owner(s, members) == Some(me))
        .collect()
}

/// The weight of `member` for `source`: the first 8 bytes of SHA-256 over both names, each
/// preceded by its length (so that `("ab", "c")` and `("a", "bc")` differ).
fn score(member: &str, source: &str) -> u64 {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in [member, source] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    let hash = ctx.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_ref()[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn names(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    fn owners(sources: &[String], members: &[String]) -> BTreeMap<String, String> {
        sources
            .iter()
            .map(|s| (s.clone(), owner(s, members).unwrap().to_owned()))
            .collect()
    }

    #[test]
    fn no_member_owns_nothing_and_one_member_owns_everything() {
        assert_eq!(owner("s", &[]), None);
        let one = vec!["m".to_owned()];
        assert!(names("s", 50).iter().all(|s| owner(s, &one) == Some("m")));
    }

    #[test]
    fn the_answer_is_the_same_whatever_the_order_of_the_members() {
        let members = names("collector-", 5);
        let mut reversed = members.clone();
        reversed.reverse();
        let sources = names("tenant-", 200);
        assert_eq!(owners(&sources, &members), owners(&sources, &reversed));
    }

    #[test]
    fn the_scores_are_fixed_across_builds() {
        // A change of the hash would move every source at an upgrade of one instance: the
        // owners of a mixed-version cluster would disagree.
        let members = names("collector-", 3);
        let got: Vec<&str> = ["contoso", "fabrikam", "tailspin", "woodgrove"]
            .iter()
            .map(|s| owner(s, &members).unwrap())
            .collect();
        assert_eq!(got, GOLDEN);
    }

    /// The owners of the sources above among collector-0..2, recorded once (a Python script
    /// of the same hash gave them too).
    const GOLDEN: [&str; 4] = ["collector-1", "collector-0", "collector-2", "collector-2"];

    #[test]
    fn sources_spread_over_the_members_and_a_join_moves_about_one_in_n() {
        let sources = names("tenant-", 1000);
        let four = names("collector-", 4);
        let before = owners(&sources, &four);
        for m in &four {
            let n = before.values().filter(|o| *o == m).count();
            assert!((170..=330).contains(&n), "{m} owns {n} of 1000 among 4");
        }
        let five = names("collector-", 5);
        let after = owners(&sources, &five);
        let moved: Vec<_> = sources.iter().filter(|s| before[*s] != after[*s]).collect();
        assert!(
            moved.iter().all(|s| after[*s] == "collector-4"),
            "only to the new member"
        );
        assert!(
            (120..=280).contains(&moved.len()),
            "{} of 1000 moved, about 200 expected",
            moved.len()
        );
    }

    proptest! {
        #[test]
        fn a_member_that_leaves_gives_up_its_own_sources_only(
            members in proptest::collection::btree_set("[a-z0-9-]{1,12}", 2..8),
            sources in proptest::collection::vec("[a-z0-9_-]{1,20}", 1..60),
            leaving in 0usize..8,
        ) {
            let members: Vec<String> = members.into_iter().collect();
            let gone = members[leaving % members.len()].clone();
            let rest: Vec<String> = members.iter().filter(|m| **m != gone).cloned().collect();
            for s in &sources {
                let before = owner(s, &members).unwrap();
                let after = owner(s, &rest).unwrap();
                if before != gone {
                    prop_assert_eq!(before, after);
                }
                prop_assert!(rest.iter().any(|m| m == after));
            }
        }
    }

    #[test]
    fn share_is_the_sources_a_member_owns() {
        let members = names("collector-", 3);
        let sources = names("tenant-", 30);
        let mut all: Vec<&str> = members
            .iter()
            .flat_map(|m| share(sources.iter().map(String::as_str), &members, m))
            .collect();
        all.sort_unstable();
        let mut expected: Vec<&str> = sources.iter().map(String::as_str).collect();
        expected.sort_unstable();
        assert_eq!(all, expected, "every source exactly once");
    }
}
