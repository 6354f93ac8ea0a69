//! The integration tests, one test binary (`cargo test --test it`): each module is one area,
//! `common` the set-up they share (the simulator, configurations, runs, exactly-once checks).
//! One binary instead of one per file: each of them linked actix-web, awc and sled again.

#[allow(dead_code)]
mod common;

mod archive;
mod auth;
mod backfill;
mod cli;
mod cluster;
mod cluster_backfill;
mod cluster_failover;
mod collect;
mod commit_group;
mod config_validate;
mod control;
mod crash;
mod details;
mod embed;
mod hostile;
mod http_sink;
mod in_flight;
mod lifecycle;
mod metrics;
mod mixed_faults;
mod next_link;
mod packaging;
mod pipeline;
mod proxy;
mod quota;
mod quota_share;
mod reload;
mod reread;
mod resilience;
mod secretless;
mod sentinel;
mod time_filter;
