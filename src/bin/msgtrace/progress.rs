//! Progress of `demo` and `backfill` on stderr: a bar redrawn in place on a terminal, a plain
//! line per page otherwise (logs, CI, pipes).

use msgtrace_actors::supervisor::PageHook;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Reports pages and rows delivered; cheap enough to call per page.
pub struct Progress {
    terminal: bool,
    started: Instant,
    /// When the bar was last drawn, and the latest (pages, rows).
    last_draw: Mutex<(Option<Instant>, u64, u64)>,
}

impl Progress {
    /// Progress on stderr, as a bar when stderr is a terminal.
    pub fn stderr() -> Arc<Progress> {
        Arc::new(Progress {
            terminal: std::io::stderr().is_terminal(),
            started: Instant::now(),
            last_draw: Mutex::new((None, 0, 0)),
        })
    }

    /// The line shown for `pages` and `rows` after `elapsed`.
    pub fn line(pages: u64, rows: u64, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64().max(1e-3);
        format!(
            "{pages:>6} pages {rows:>10} rows delivered and checkpointed  {:>9.0} rows/s  {:>6.1} s",
            rows as f64 / secs,
            secs
        )
    }

    /// Reports one committed page.
    pub fn page(&self, pages: u64, rows: u64) {
        let line = Progress::line(pages, rows, self.started.elapsed());
        if !self.terminal {
            eprintln!("  {line}");
            return;
        }
        // Redraw at most ten times a second.
        let mut last = self.last_draw.lock().unwrap_or_else(|p| p.into_inner());
        last.1 = pages;
        last.2 = rows;
        if last
            .0
            .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        last.0 = Some(Instant::now());
        Progress::draw(&line);
    }

    fn draw(line: &str) {
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r  {line}");
        let _ = err.flush();
    }

    /// Ends the bar: draws the final figures and a newline on a terminal.
    pub fn finish(&self) {
        if self.terminal {
            let last = self.last_draw.lock().unwrap_or_else(|p| p.into_inner());
            if last.0.is_some() {
                Progress::draw(&Progress::line(last.1, last.2, self.started.elapsed()));
            }
            eprintln!();
        }
    }

    /// A page hook that reports here.
    pub fn hook(self: &Arc<Progress>) -> PageHook {
        let me = self.clone();
        Arc::new(move |_source, pages, rows| me.page(pages, rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_shows_pages_rows_and_rate() {
        let l = Progress::line(3, 3000, Duration::from_secs(2));
        assert!(
            l.contains("3 pages") && l.contains("3000 rows") && l.contains("1500 rows/s"),
            "{l}"
        );
    }
}
