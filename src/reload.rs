//! Configuration reloads: `SIGHUP` to `msgtrace run`, [`Started::reload`], and
//! [`crate::embed::EngineHandle::reload`].
//!
//! A new configuration is checked as `msgtrace validate` checks it (the configuration's own
//! checks are the caller's, by loading it; then the pre-run checks of [`crate::preflight`] and
//! every source's credentials and certificates); an invalid one changes nothing. A valid one is
//! compared with the running one ([`plan`]) and applied:
//!
//! - every sink kept reopens (the file sink its path: logrotate renamed the file);
//! - sinks added start, sinks whose settings changed are rebuilt, sinks removed stop;
//! - sources added start; sources removed stop after their page in flight; sources whose
//!   settings (or sinks) changed stop after their page in flight and start again, together,
//!   from their checkpoint ([`msgtrace_actors::supervisor::Reconfigure`]);
//! - what the engine cannot change while it runs (the state directory, the listeners, logging,
//!   a tenant's request budget) is kept as it is, with a warning that it needs a restart.

use crate::config::Config;
use crate::engine::{pipeline_hooks, sink_auths, source_entries, RunningSink, Started};
use crate::secrets::SecretStore;
use msgtrace_actors::sink::{FlushSink, Reopen};
use msgtrace_actors::supervisor::Reconfigure;
use msgtrace_actors::supervisor::SourceEntry;
use std::collections::{BTreeMap, BTreeSet};

/// The sign-in of each sink that has one, by sink id.
type SinkAuths = std::collections::HashMap<String, msgtrace_actors::spec::AuthSpec>;
use tracing::{info, warn};

/// What a reload changes, from the running and the new configuration alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Sources that start.
    pub added: Vec<String>,
    /// Sources that stop after their page in flight.
    pub removed: Vec<String>,
    /// Sources that stop after their page in flight and start again from their checkpoint:
    /// their settings changed, or the sinks they feed.
    pub restarted: Vec<String>,
    /// Sinks that start.
    pub sinks_added: Vec<String>,
    /// Sinks that stop.
    pub sinks_removed: Vec<String>,
    /// Sinks whose settings changed: a new one replaces the running one.
    pub sinks_rebuilt: Vec<String>,
    /// Changes that take effect only when the engine starts again, one line each
    /// (`key: what; needs a restart`). The engine keeps what it runs.
    pub needs_restart: Vec<String>,
}

/// Why a configuration was not reloaded: every problem, one line each. The running
/// configuration stays.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ReloadError {
    /// The problems, one line each (`key: what is wrong; what to do`).
    pub problems: Vec<String>,
}

/// The sinks that take `source`'s events.
fn feeds<'a>(config: &'a Config, source: &str) -> BTreeSet<&'a str> {
    config
        .sinks
        .values()
        .filter(|s| s.inputs.iter().any(|i| i == source))
        .map(|s| s.id.as_str())
        .collect()
}

/// The keys of `old` that `new` does not have.
fn gone<V>(old: &BTreeMap<String, V>, new: &BTreeMap<String, V>) -> Vec<String> {
    old.keys()
        .filter(|k| !new.contains_key(*k))
        .cloned()
        .collect()
}

/// What reloading `new` over the running `old` changes.
pub fn plan(old: &Config, new: &Config) -> ReloadPlan {
    let mut p = ReloadPlan::default();
    for (id, sink) in &new.sinks {
        match old.sinks.get(id) {
            None => p.sinks_added.push(id.clone()),
            Some(o) if o.kind != sink.kind => p.sinks_rebuilt.push(id.clone()),
            Some(_) => {}
        }
    }
    p.sinks_removed = gone(&old.sinks, &new.sinks);
    for (id, source) in &new.sources {
        let Some(o) = old.sources.get(id) else {
            p.added.push(id.clone());
            if source.log_level.is_some() {
                p.needs_restart.push(format!(
                    "sources.{id}.log_level: needs a restart (logging is set up at start); the source runs with the global log_level until then"
                ));
            }
            continue;
        };
        let sinks = feeds(new, id);
        if o != source
            || feeds(old, id) != sinks
            || sinks.iter().any(|s| p.sinks_rebuilt.iter().any(|r| r == s))
        {
            p.restarted.push(id.clone());
        }
        if o.log_level != source.log_level {
            p.needs_restart.push(format!(
                "sources.{id}.log_level: changed; needs a restart (logging is set up at start)"
            ));
        }
        if o.quota != source.quota {
            p.needs_restart.push(format!(
                "sources.{id}.quota: changed; needs a restart (the tenant's request budget is shared and kept while the engine runs)"
            ));
        }
    }
    p.removed = gone(&old.sources, &new.sources);
    if old.state_dir != new.state_dir {
        p.needs_restart.push(format!(
            "state_dir: changed to {}; needs a restart (the engine keeps using {})",
            new.state_dir.display(),
            old.state_dir.display()
        ));
    }
    for (key, old, new) in [
        ("metrics_listen", old.metrics_listen, new.metrics_listen),
        ("control_listen", old.control_listen, new.control_listen),
    ] {
        if old != new {
            let shown =
                |a: Option<std::net::SocketAddr>| a.map_or("none".into(), |a| a.to_string());
            p.needs_restart.push(format!(
                "{key}: changed to {}; needs a restart (the engine keeps serving {})",
                shown(new),
                shown(old)
            ));
        }
    }
    if old.cluster != new.cluster {
        p.needs_restart
            .push("cluster: changed; needs a restart (membership is set up at start)".into());
    }
    if old.log_level != new.log_level || old.log_format != new.log_format {
        p.needs_restart.push(
            "log_level, log_format: changed; needs a restart (logging is set up at start)".into(),
        );
    }
    p
}

impl Started {
    /// Every sink reopens ([`msgtrace_actors::sink::Sink::reopen`]) after the pages sent to
    /// it: the file sink opens its path again (logrotate renamed the file).
    pub fn reopen_sinks(&self) {
        for s in &self.sinks {
            s.addr.do_send(Reopen);
        }
    }

    /// Reloads the engine with `config` (validated, e.g. by [`crate::config::load`]): checks it
    /// as `msgtrace validate` does, then applies it as the [module documentation](self) says,
    /// and returns what changed. An invalid configuration changes nothing: the error lists every
    /// problem. Returns once the change is under way; sources stopping finish their page in
    /// flight in the background.
    pub async fn reload(&mut self, config: &Config) -> Result<ReloadPlan, ReloadError> {
        let (sources, sink_auth) = self.check(config)?;
        let plan = plan(&self.config, config);
        for w in config.warnings.iter().chain(&plan.needs_restart) {
            warn!("reload: {w}");
        }
        // What the engine cannot change while it runs stays as it is (and is warned about again
        // at the next reload).
        let running = Config {
            state_dir: self.config.state_dir.clone(),
            metrics_listen: self.config.metrics_listen,
            control_listen: self.config.control_listen,
            log_level: self.config.log_level,
            log_format: self.config.log_format,
            cluster: self.config.cluster.clone(),
            ..config.clone()
        };
        let retired = self.swap_sinks(&plan, &running, &sink_auth);
        for id in &plan.added {
            msgtrace_actors::telemetry::register_source(id);
        }
        let keys: Vec<(String, String)> = sources
            .iter()
            .map(|e| (e.spec.id.clone(), e.spec.quota_key()))
            .collect();
        let stopped = self
            .supervisor
            .send(Reconfigure {
                sources,
                restart: plan.restarted.iter().cloned().collect(),
                sinks: self.sinks.iter().map(|s| s.entry(&running)).collect(),
                hooks: pipeline_hooks(&running, &self.opts),
            })
            .await
            .map_err(|e| ReloadError {
                problems: vec![format!(
                    "the engine is stopping ({e}); nothing was reloaded"
                )],
            })?;
        // `[cluster]`: the agent shares the sources as they are now.
        if let Some(cluster) = &self.cluster {
            cluster.set_sources(keys);
        }
        // A retired sink stops once no fetcher that fed it is left.
        actix_rt::spawn(async move {
            let _ = stopped.await;
            for s in retired {
                if let Ok(Err(e)) = s.addr.send(FlushSink).await {
                    warn!(error = %e, "sink flush failed");
                }
                s.arbiter.stop();
            }
        });
        self.config = running;
        info!(
            added = ?plan.added,
            removed = ?plan.removed,
            restarted = ?plan.restarted,
            sinks_added = ?plan.sinks_added,
            sinks_removed = ?plan.sinks_removed,
            sinks_rebuilt = ?plan.sinks_rebuilt,
            "configuration reloaded; every sink kept reopened"
        );
        Ok(plan)
    }

    /// Checks `config` as `msgtrace validate` does (the pre-run checks, every source's and
    /// sink's credentials and certificates): the sources as the supervisor runs them and the
    /// sinks' sign-in, or every problem.
    fn check(&self, config: &Config) -> Result<(Vec<SourceEntry>, SinkAuths), ReloadError> {
        let mut problems = Vec::new();
        if let Err(e) = crate::preflight::check(config) {
            problems.extend(e.problems);
        }
        let secrets = SecretStore::new(self.store.clone());
        let sources = match source_entries(config, &self.opts, &secrets) {
            Ok(s) => s,
            Err(e) => {
                problems.extend(e.iter().map(ToString::to_string));
                Vec::new()
            }
        };
        let sink_auth = sink_auths(config, &secrets).unwrap_or_else(|e| {
            problems.extend(e.iter().map(ToString::to_string));
            Default::default()
        });
        if !problems.is_empty() {
            return Err(ReloadError { problems });
        }
        Ok((sources, sink_auth))
    }

    /// Keeps the sinks `plan` keeps (each reopens), starts the added and rebuilt ones, and
    /// returns the removed and replaced ones, to stop once no fetcher feeds them.
    fn swap_sinks(
        &mut self,
        plan: &ReloadPlan,
        running: &Config,
        sink_auth: &SinkAuths,
    ) -> Vec<RunningSink> {
        let stopping = self.stopping.subscribe();
        let mut sinks = Vec::new();
        let mut retired = Vec::new();
        for mut s in std::mem::take(&mut self.sinks) {
            let Some(id) = s.config.as_ref().map(|c| c.id.clone()) else {
                sinks.push(s); // a host's own sink
                continue;
            };
            if plan.sinks_removed.contains(&id) || plan.sinks_rebuilt.contains(&id) {
                retired.push(s);
            } else {
                s.config = running.sinks.get(&id).cloned();
                sinks.push(s);
            }
        }
        // Only the sinks kept reopen now. A new one opens at its first page, and its first page
        // comes only once every source this reload stops has stopped: a rebuilt file sink so
        // never opens (or repairs) the file while the sink it replaces still writes it.
        for s in &sinks {
            s.addr.do_send(Reopen);
        }
        for id in plan.sinks_added.iter().chain(&plan.sinks_rebuilt) {
            let c = &running.sinks[id];
            sinks.push(RunningSink::configured(
                c,
                (sink_auth.get(id).cloned(), None),
                &self.opts,
                self.store.dir(),
                stopping.clone(),
            ));
        }
        self.sinks = sinks;
        retired
    }
}

/// A SIGHUP, or the file changed (`why`): reads the configuration file again and reloads the
/// engine with it; with no file, or an invalid one, the running configuration stays (every
/// problem logged) and only the sinks reopen.
pub(crate) async fn from_file(engine: &mut Started, file: Option<&std::path::Path>, why: &str) {
    let Some(file) = file else {
        info!("{why}: no configuration file to read again; reopening the sinks");
        engine.reopen_sinks();
        return;
    };
    info!(file = %file.display(), "{why}: reloading the configuration");
    let problems = match crate::config::load(file) {
        Ok(config) => match engine.reload(&config).await {
            Ok(_) => return,
            Err(e) => e.problems,
        },
        Err(errors) => errors.errors.iter().map(ToString::to_string).collect(),
    };
    for p in &problems {
        tracing::error!("reload: {p}");
    }
    tracing::error!(
        file = %file.display(),
        errors = problems.len(),
        "configuration not reloaded: the running configuration stays; fix the file (and send SIGHUP again, unless --watch-config is on); the sinks reopened"
    );
    engine.reopen_sinks();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two Graph sources `a` (with the keys `a_extra`) and `b`, `a` feeding the file sink `fa`,
    /// and `fb` (a sink table, or nothing); `top`: top-level keys.
    fn config(a_extra: &str, fb: &str, top: &str) -> Config {
        let text = format!(
            r#"
            state_dir = "/tmp/msgtrace-reload-plan"
            {top}
            [sources.a]
            {a_extra}
            [sources.a.auth]
            {AUTH}
            [sources.b]
            [sources.b.auth]
            {AUTH}
            [sinks.fa]
            type = "file"
            inputs = ["a"]
            path = "/tmp/a.ndjson"
            {fb}
            "#
        );
        crate::config::from_str(&text).unwrap_or_else(|e| panic!("{e}"))
    }

    const AUTH: &str =
        "method = \"oauth\"\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = \"s\"";
    const FB: &str = "[sinks.fb]\ntype = \"file\"\ninputs = [\"b\"]\npath = \"/tmp/b.ndjson\"";

    #[test]
    fn the_same_configuration_changes_nothing() {
        let c = config("", FB, "");
        assert_eq!(plan(&c, &c.clone()), ReloadPlan::default());
    }

    #[test]
    fn changed_listen_addresses_need_a_restart_each_named() {
        let old = config("", FB, "metrics_listen = \"127.0.0.1:9464\"");
        let new = config("", FB, "control_listen = \"127.0.0.1:9465\"");
        assert_eq!(
            plan(&old, &new).needs_restart,
            [
                "metrics_listen: changed to none; needs a restart (the engine keeps serving 127.0.0.1:9464)",
                "control_listen: changed to 127.0.0.1:9465; needs a restart (the engine keeps serving none)",
            ]
        );
    }

    #[test]
    fn a_changed_source_restarts_and_the_others_are_left_alone() {
        let old = config("", FB, "");
        let new = config("page_size = 10", FB, "");
        let p = plan(&old, &new);
        assert_eq!(p.restarted, ["a"]);
        assert!(p.added.is_empty() && p.removed.is_empty() && p.needs_restart.is_empty());
    }

    #[test]
    fn a_rebuilt_sink_restarts_the_sources_it_feeds_and_a_removed_one_those_it_fed() {
        let old = config("", FB, "");
        let rebuilt = config("", &FB.replace("b.ndjson", "b2.ndjson"), "");
        let p = plan(&old, &rebuilt);
        assert_eq!(
            (p.sinks_rebuilt, p.restarted),
            (vec!["fb".into()], vec!["b".into()])
        );
        // `b` now feeds `fa`, `fb` is gone: `b` restarts with its new sinks; `fa` is kept.
        let mut new = config("", "", "");
        new.sinks.get_mut("fa").unwrap().inputs = vec!["a".into(), "b".into()];
        let p = plan(&old, &new);
        assert_eq!(p.sinks_removed, ["fb"]);
        assert!(p.sinks_rebuilt.is_empty());
        assert_eq!(p.restarted, ["b"]);
    }

    #[test]
    fn sources_added_and_removed() {
        let old = config("", FB, "");
        let mut new = old.clone();
        let mut c = new.sources.remove("b").unwrap();
        c.id = "c".into();
        new.sources.insert("c".into(), c);
        new.sinks.get_mut("fb").unwrap().inputs = vec!["c".into()];
        let p = plan(&old, &new);
        assert_eq!((p.added, p.removed), (vec!["c".into()], vec!["b".into()]));
        assert!(p.restarted.is_empty() && p.needs_restart.is_empty());
        // An added source's own log level is set up at the next start only.
        new.sources.get_mut("c").unwrap().log_level = Some(crate::config::LogLevel::Debug);
        let p = plan(&old, &new);
        assert!(p.needs_restart[0].starts_with("sources.c.log_level: needs a restart"));
    }

    #[test]
    fn what_cannot_change_while_running_is_said_to_need_a_restart() {
        let old = config("", FB, "");
        let new = config(
            "quota = { requests = 5, per_secs = 1 }\nlog_level = \"debug\"",
            FB,
            "metrics_listen = \"127.0.0.1:9464\"\ncontrol_listen = \"127.0.0.1:9465\"\nlog_level = \"debug\"",
        );
        let mut new = new;
        new.state_dir = "/tmp/elsewhere".into();
        let p = plan(&old, &new);
        let keys: Vec<&str> = p
            .needs_restart
            .iter()
            .map(|l| l.split(':').next().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "sources.a.log_level",
                "sources.a.quota",
                "state_dir",
                "metrics_listen",
                "control_listen",
                "log_level, log_format"
            ]
        );
        assert!(p
            .needs_restart
            .iter()
            .all(|l| l.contains("needs a restart")));
        assert_eq!(p.restarted, ["a"]);
    }
}

/// How often `msgtrace run --watch-config` looks at the configuration file.
pub const WATCH_CONFIG_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// `msgtrace run --watch-config`: tells when the configuration file changed (its modification time, size or
/// inode: an editor that saves by renaming a new file over it changes the inode), looking every
/// [`WATCH_CONFIG_EVERY`]. No file system notification crate: a poll is enough for a file
/// people edit.
pub struct ConfigWatch {
    path: std::path::PathBuf,
    seen: Option<FileStamp>,
    every: tokio::time::Interval,
}

/// What tells one version of a file from the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    ino: u64,
}

fn stamp(path: &std::path::Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Some(FileStamp {
        modified: m.modified().ok(),
        len: m.len(),
        ino,
    })
}

impl ConfigWatch {
    /// Watches `path` from its state now.
    pub fn new(path: std::path::PathBuf) -> ConfigWatch {
        let mut every = tokio::time::interval(WATCH_CONFIG_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ConfigWatch {
            seen: stamp(&path),
            path,
            every,
        }
    }

    /// Resolves when the file changed since it was last seen (cancel-safe). A file that is gone
    /// for a moment (an editor replacing it) is not a change until it is back.
    pub async fn changed(&mut self) {
        loop {
            self.every.tick().await;
            let now = stamp(&self.path);
            if now.is_some() && now != self.seen {
                self.seen = now;
                return;
            }
        }
    }
}
