//! The binary's signal handling: SIGINT and SIGTERM stop the engine, SIGHUP reloads it, and
//! with `--watch-config` a change of the configuration file reloads it too. The library
//! installs no handler; this turns signals into [`Control`]s for
//! [`msgtrace::embed::EngineBuilder::run`].

use anyhow::Context as _;
use msgtrace::engine::Control;
use msgtrace::reload::ConfigWatch;
use std::path::PathBuf;
use tokio::sync::mpsc;

/// Installs the handlers now (from here on a SIGHUP no longer ends the process) and forwards
/// them, and the changes of `watch` when given, until the engine is gone. Call it inside the
/// actix System that runs the engine.
pub fn forward(watch: Option<PathBuf>) -> anyhow::Result<mpsc::UnboundedReceiver<Control>> {
    let mut signals = Signals::new()?;
    let mut watch = watch.map(ConfigWatch::new);
    let (tx, rx) = mpsc::unbounded_channel();
    actix_rt::spawn(async move {
        loop {
            let changed = async {
                match &mut watch {
                    Some(w) => w.changed().await,
                    None => std::future::pending().await,
                }
            };
            let control = tokio::select! {
                c = signals.next() => c,
                () = changed => Control::Reload("the configuration file changed"),
            };
            if tx.send(control).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// The signals handled, installed once for the whole run.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let handler =
                |kind, name| signal(kind).with_context(|| format!("cannot handle {name}"));
            Ok(Signals {
                term: handler(SignalKind::terminate(), "SIGTERM")?,
                hup: handler(SignalKind::hangup(), "SIGHUP")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    async fn next(&mut self) -> Control {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => Control::Stop,
                _ = self.term.recv() => Control::Stop,
                _ = self.hup.recv() => Control::Reload("SIGHUP"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Control::Stop
        }
    }
}
