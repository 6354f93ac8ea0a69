//! `msgtrace backfill` with `[cluster]`: the backfill is asked for through etcd and run by the
//! instance that holds its source (under the source's one fetcher and its tenant's one request
//! budget); the command follows the request until it has succeeded or failed
//! (docs/scaling.md, "Backfills").

use std::process::ExitCode;
use std::time::Duration;

use msgtrace::actors::cluster::backfill::{self, Asked, Request, State};
use msgtrace::actors::cluster::etcd::Etcd;
use msgtrace::actors::cluster::fence;
use msgtrace::actors::fetcher::Backfill;
use msgtrace::config::ClusterConfig;
use msgtrace::engine::Control;

use crate::signals;

/// How often the request is read while followed.
const POLL: Duration = Duration::from_millis(500);

/// Asks for `range` of `source` through `cluster`'s etcd and, unless `detach`, follows it: 0
/// once it succeeded (now or before), 1 once it failed or cannot be asked, 130 when stopped
/// (the request stays in etcd and runs all the same).
pub fn ask(cluster: &ClusterConfig, source: &str, range: Backfill, detach: bool) -> ExitCode {
    msgtrace::actors::http::install_crypto();
    let etcd = Etcd::new(cluster.etcd.clone(), Duration::from_secs(5));
    let prefix = cluster.prefix.clone();
    let asked_by = format!(
        "{} (msgtrace backfill, pid {})",
        cluster.name,
        std::process::id()
    );
    let request = Request::new(source, &range, &asked_by, chrono::Utc::now());
    let run = async move {
        let asked = match backfill::ask(&etcd, &prefix, &request).await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("msgtrace: backfill not asked for: {e}");
                return ExitCode::from(1);
            }
        };
        let found = asked.found().clone();
        let key = String::from_utf8_lossy(&found.key).into_owned();
        eprintln!("msgtrace: {}", asked_line(&asked, &key));
        if detach {
            println!("backfill {key}: {}", found.request.describe());
            return ExitCode::SUCCESS;
        }
        let controls = match signals::forward(None) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("msgtrace: {e:#}");
                return ExitCode::from(1);
            }
        };
        follow(&etcd, &prefix, found.key, controls).await
    };
    actix_rt::System::new().block_on(run)
}

/// What was asked, in one line.
fn asked_line(asked: &Asked, key: &str) -> String {
    let r = &asked.found().request;
    let range = match r.backfill() {
        Some(b) => format!("{} from {} to {}", r.source, b.start, b.end),
        None => format!("{} from {} to {}", r.source, r.start, r.end),
    };
    match asked {
        Asked::New(_) => format!("backfill of {range} asked for in etcd ({key}); the instance holding {} runs it", r.source),
        Asked::Existing(_) => format!("backfill of {range} was asked for already ({key}, by {} at {}): following it; it runs once", r.asked_by, r.asked_at),
        Asked::Requeued(_) => format!("backfill of {range} had failed; asked for again ({key})"),
    }
}

/// Reads the request at `key` until it is over, saying each change of where it is.
async fn follow(
    etcd: &Etcd,
    prefix: &str,
    key: Vec<u8>,
    mut controls: tokio::sync::mpsc::UnboundedReceiver<Control>,
) -> ExitCode {
    let shown = String::from_utf8_lossy(&key).into_owned();
    let mut said = Said::default();
    loop {
        match backfill::get(etcd, &key).await {
            Ok(Some(found)) => {
                let r = &found.request;
                if r.state.is_final() {
                    return ended(&shown, r);
                }
                let line = match etcd.get(&fence::owner_key(prefix, &r.source)).await {
                    Ok(kv) => said.next(r, kv.map(|kv| fence::holder(&kv)).as_deref()),
                    Err(e) => said.unreachable(&e.to_string()),
                };
                if let Some(line) = line {
                    eprintln!("msgtrace: {line}");
                }
            }
            Ok(None) => {
                eprintln!("msgtrace: the backfill request {shown} was removed from etcd; run the same command again to ask for it again");
                return ExitCode::from(1);
            }
            Err(e) => {
                if let Some(line) = said.unreachable(&e.to_string()) {
                    eprintln!("msgtrace: {line}");
                }
            }
        }
        tokio::select! {
            () = actix_rt::time::sleep(POLL) => {}
            c = controls.recv() => if matches!(c, Some(Control::Stop) | None) {
                eprintln!("msgtrace: stopped following {shown}; the request stays in etcd and runs on the instance holding its source: run the same command again to follow it");
                return ExitCode::from(130);
            },
        }
    }
}

/// The end of a request, printed: its summary (0), or its error (1).
fn ended(key: &str, r: &Request) -> ExitCode {
    match r.state {
        State::Succeeded => {
            println!("backfill {key}: {}", r.describe());
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "msgtrace: backfill {key} {}; run the same command again to retry it",
                r.describe()
            );
            ExitCode::from(1)
        }
    }
}

/// What was said of a request followed: a line only when where it is changes.
#[derive(Debug, Default)]
struct Said {
    last: Option<String>,
}

impl Said {
    /// The line for `r` (its source held by `holder`), if it says something new.
    fn next(&mut self, r: &Request, holder: Option<&str>) -> Option<String> {
        let line = match (r.state, holder) {
            (State::Queued, Some(h)) => format!("queued; {} is held by {h}, which takes it within a third of its lease", r.source),
            (State::Queued, None) => format!("queued; no live instance holds {} yet (is a `msgtrace run` with this [cluster] running?)", r.source),
            (State::Running, Some(h)) if Some(h) != r.by.as_deref() => format!(
                "{}, which no longer holds {}; {h} takes it over and resumes it from its checkpoint",
                r.describe(),
                r.source
            ),
            (State::Running, None) => format!(
                "{}, which no longer holds {}; the next instance to hold it resumes it from its checkpoint",
                r.describe(),
                r.source
            ),
            _ => r.describe(),
        };
        self.say(line)
    }

    /// The line for etcd not answering, once until it answers again.
    fn unreachable(&mut self, error: &str) -> Option<String> {
        self.say(format!(
            "{error}; still following (Ctrl-C stops following, the request stays)"
        ))
    }

    fn say(&mut self, line: String) -> Option<String> {
        if self.last.as_deref() == Some(line.as_str()) {
            return None;
        }
        self.last = Some(line.clone());
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(state: State, by: Option<&str>) -> Request {
        let at = |s| chrono::DateTime::from_timestamp(s, 0).unwrap();
        let range = Backfill {
            start: at(100),
            end: at(200),
        };
        Request {
            state,
            by: by.map(str::to_owned),
            ..Request::new("contoso", &range, "cli", at(1))
        }
    }

    #[test]
    fn each_change_of_where_the_request_is_is_said_once() {
        let mut said = Said::default();
        let queued = request(State::Queued, None);
        let line = said.next(&queued, None).unwrap();
        assert!(line.contains("no live instance holds contoso"), "{line}");
        assert_eq!(said.next(&queued, None), None);
        let line = said.next(&queued, Some("c-1")).unwrap();
        assert!(line.contains("held by c-1"), "{line}");
        let running = request(State::Running, Some("c-1"));
        assert_eq!(said.next(&running, Some("c-1")).unwrap(), "running on c-1");
        assert_eq!(said.next(&running, Some("c-1")), None);
        let line = said.next(&running, Some("c-2")).unwrap();
        assert!(
            line.contains("no longer holds contoso; c-2 takes it over"),
            "{line}"
        );
        let line = said.next(&running, None).unwrap();
        assert!(line.contains("the next instance to hold it"), "{line}");
        assert!(said.unreachable("etcd down").is_some());
        assert!(said.unreachable("etcd down").is_none());
        assert_eq!(said.next(&running, Some("c-1")).unwrap(), "running on c-1");
    }
}
