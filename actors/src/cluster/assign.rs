//! What an instance does about its claims, from what it sees: the live members, the sources of
//! its configuration and the claims it holds. Pure: the agent ([`super::agent`]) does the I/O.

use std::collections::{BTreeMap, BTreeSet};

use super::ownership;

/// The claims to try and the claims to give up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Moves {
    /// Sources the hash gives this instance that it does not hold yet: to claim (a claim
    /// another instance still holds is tried again at the next round).
    pub claim: Vec<String>,
    /// Sources it holds that the hash gives another member now: to release once their page in
    /// flight is committed.
    pub release: Vec<String>,
}

/// The moves of `me` among `members` for `sources`, holding `held`. A source is hashed by its
/// key in `keys` (its tenant's request budget: so that one instance collects every source of a
/// tenant, and the budget is the tenant's across the cluster), or by its id when it has none.
/// An instance that is not among the live members (its lease ended, or it has not registered
/// yet) claims nothing and gives everything up.
pub fn moves(
    sources: &[String],
    keys: &BTreeMap<String, String>,
    members: &[String],
    me: &str,
    held: &BTreeSet<String>,
) -> Moves {
    let live = members.iter().any(|m| m == me);
    let key_of = |s: &str| keys.get(s).map_or(s.to_owned(), Clone::clone);
    let mine: BTreeSet<&str> = if live {
        sources
            .iter()
            .map(String::as_str)
            .filter(|s| ownership::owner(&key_of(s), members) == Some(me))
            .collect()
    } else {
        BTreeSet::new()
    };
    Moves {
        claim: mine
            .iter()
            .filter(|s| !held.contains(**s))
            .map(|s| (*s).to_owned())
            .collect(),
        release: held
            .iter()
            .filter(|s| !mine.contains(s.as_str()))
            .cloned()
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    #[test]
    fn a_member_claims_its_share_and_gives_up_the_rest() {
        let sources = names("tenant-", 12);
        let members = names("c-", 3);
        let mine: BTreeSet<String> =
            ownership::share(sources.iter().map(String::as_str), &members, "c-0")
                .into_iter()
                .map(str::to_owned)
                .collect();
        assert!(!mine.is_empty() && mine.len() < 12);
        let m = moves(
            &sources,
            &BTreeMap::new(),
            &members,
            "c-0",
            &BTreeSet::new(),
        );
        assert_eq!(m.claim, mine.iter().cloned().collect::<Vec<_>>());
        assert!(m.release.is_empty());
        // Holding everything (it was alone): the others' shares go, its own stay.
        let all: BTreeSet<String> = sources.iter().cloned().collect();
        let m = moves(&sources, &BTreeMap::new(), &members, "c-0", &all);
        assert!(m.claim.is_empty());
        assert_eq!(m.release.len(), 12 - mine.len());
        assert!(m.release.iter().all(|s| !mine.contains(s)));
        // Holding its share: nothing to do.
        assert_eq!(
            moves(&sources, &BTreeMap::new(), &members, "c-0", &mine),
            Moves::default()
        );
    }

    #[test]
    fn an_instance_that_is_not_a_live_member_holds_nothing() {
        let sources = names("tenant-", 4);
        let held: BTreeSet<String> = ["tenant-1".to_owned()].into();
        let m = moves(&sources, &BTreeMap::new(), &names("c-", 2), "gone", &held);
        assert_eq!(
            m,
            Moves {
                claim: vec![],
                release: vec!["tenant-1".into()]
            }
        );
    }

    #[test]
    fn a_claim_of_a_source_no_longer_configured_is_given_up() {
        let held: BTreeSet<String> = ["removed".to_owned()].into();
        let m = moves(
            &names("tenant-", 2),
            &BTreeMap::new(),
            &["c-0".to_owned()],
            "c-0",
            &held,
        );
        assert_eq!(m.release, ["removed"]);
        assert_eq!(m.claim, ["tenant-0", "tenant-1"]);
    }

    #[test]
    fn the_sources_of_one_tenant_go_to_one_member() {
        let sources = names("s-", 40);
        // Eight tenants of five sources each.
        let keys: BTreeMap<String, String> = sources
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), format!("graph.example/tenant-{}", i % 8)))
            .collect();
        let members = names("c-", 3);
        let shares: Vec<Vec<String>> = members
            .iter()
            .map(|m| moves(&sources, &keys, &members, m, &BTreeSet::new()).claim)
            .collect();
        assert_eq!(
            shares.iter().map(Vec::len).sum::<usize>(),
            40,
            "every source once"
        );
        for (i, s) in sources.iter().enumerate() {
            let holder = shares.iter().position(|share| share.contains(s)).unwrap();
            let sibling = &sources[(i + 8) % 40];
            assert!(
                shares[holder].contains(sibling),
                "{s} and {sibling} share a tenant"
            );
        }
        assert!(
            shares.iter().filter(|s| !s.is_empty()).count() > 1,
            "tenants spread"
        );
    }
}
