//! Several instances sharing the sources through etcd (`[cluster]`, docs/scaling.md).
//!
//! Plain pieces, each in its own file, that the engine wires together:
//!
//! | file | its one job |
//! |---|---|
//! | [`etcd`] | etcd's JSON gateway over the engine's HTTP client: leases, ranges, puts, transactions, typed errors |
//! | [`membership`] | an instance's key under `<prefix>/members/`, bound to its lease; the live members |
//! | [`ownership`] | rendezvous hashing: which live member should collect a source (pure) |
//! | [`fence`] | a source's claim bound to its owner's lease, and the checkpoint write that only the claim's holder can make |
//! | [`assign`] | from the members and the claims held, which sources to claim and which to give up (pure) |
//! | [`record`] | what the supervisor and a fetcher ask: may a source start here, the checkpoint of record read and written fenced |
//! | [`agent`] | the loop that keeps the lease and the registration, claims and releases, and publishes what this instance owns |
//! | [`handoff`] | the owner's loop that takes the backfill requests of the sources it holds, runs them through the supervisor and records their end |
//! | [`backfill`] | backfills asked for through etcd and run by the owner of their source: the request, asked, taken and ended fenced |
//!
//! The keys, all under the deployment's `prefix`:
//!
//! | key | value | bound to |
//! |---|---|---|
//! | `<prefix>/members/<name>` | `{"version":"1","since":...}` | the instance's lease |
//! | `<prefix>/owners/<source>` | `{"version":"1","owner":<name>}` | the owner's lease |
//! | `<prefix>/checkpoints/<source>` | the checkpoint of record | nothing: it outlives its writers |
//! | `<prefix>/backfills/<source>/<start>-<end>` | `{"version":"1","state":"queued",...}`, a backfill asked for | nothing: removed by hand once it is of no interest |

pub mod agent;
pub mod assign;
pub mod backfill;
pub mod etcd;
pub mod fence;
pub mod handoff;
pub mod membership;
pub mod ownership;
pub mod record;
