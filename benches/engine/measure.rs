//! Child processes and what the kernel says about them: wall time and CPU time (user + system, all
//! threads) from `wait4`'s rusage, and peak RSS from the child's own `VmHWM`, so that the
//! simulator in the bench process is never counted in a figure.
//!
//! `ru_maxrss` cannot be used for the peak RSS: `std::process::Command` starts children with
//! `posix_spawn` (the child shares the parent's memory until `exec`), and Linux folds the
//! high-water mark of the memory a process leaves at `exec` into its `ru_maxrss`, so every child
//! would report at least the bench process's own RSS. `VmHWM` in `/proc/<pid>/status` belongs to
//! the memory of the new program only.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::child::Work;

/// A running child: its process, its stdout lines (each stamped when it arrived) and its start.
pub struct Running {
    child: Child,
    /// Stdout lines, stamped on arrival.
    pub lines: Receiver<(Instant, String)>,
    reader: Option<JoinHandle<()>>,
    /// When the child was spawned.
    pub spawned: Instant,
}

/// A child that has ended.
#[derive(Debug)]
pub struct Finished {
    /// Spawn to exit.
    pub wall: Duration,
    /// User + system CPU of the child (all its threads).
    pub cpu: Duration,
    /// Minor page faults of the child (all its threads): memory the kernel had to map and zero,
    /// which costs system CPU.
    pub minor_faults: u64,
    /// Peak resident set size of the child (its `VmHWM`), bytes.
    pub max_rss: u64,
    /// Its resident set size once settled: the median of `VmRSS` sampled every 100 ms over the
    /// second half of the run, bytes (only where sampled, see [`settled`]).
    pub settled_rss: Option<u64>,
    /// Whether it exited with status 0.
    pub success: bool,
    /// Whether it was killed for running past its time limit.
    pub hung: bool,
    /// Its `RESULT {...}` line, parsed.
    pub result: serde_json::Value,
}

/// Starts this bench binary again as a child that runs `work`.
pub fn spawn(work: &Work) -> Running {
    let exe = std::env::current_exe().expect("the bench knows its own path");
    let spec = serde_json::to_string(work).expect("work serializes");
    let spawned = Instant::now();
    // `BENCH_CHILD_WRAP="valgrind --tool=callgrind"` (words split on spaces) runs each child
    // under that command: a profile, or an instruction count that the host's noise cannot move.
    // The figures printed are then the wrapper's, not the engine's.
    let wrap: Vec<String> = std::env::var("BENCH_CHILD_WRAP")
        .map(|w| w.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let mut command = match wrap.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    command.arg("--child").arg(spec);
    let mut running = spawn_command(command, Stdio::piped());
    running.spawned = spawned;
    running
}

/// Starts another program as a measured child (curl, the Python peer): its stdout goes to
/// `stdout`; when that is a pipe, its lines are read (a `RESULT {json}` line among them).
pub fn spawn_command(mut command: Command, stdout: Stdio) -> Running {
    let spawned = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("the bench cannot start {command:?}: {e}"));
    let (tx, rx) = mpsc::channel();
    let reader = child.stdout.take().map(|stdout| {
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        })
    });
    Running {
        child,
        lines: rx,
        reader,
        spawned,
    }
}

impl Running {
    /// Waits for the next line; `None` when the child closed its stdout.
    pub fn next_line(&self) -> Option<(Instant, String)> {
        self.lines.recv().ok()
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (a graceful stop: the engine finishes the page in flight and exits); reap it
    /// with [`Running::wait`].
    pub fn terminate(&self) {
        // SAFETY: kill(2) on the pid of our own unreaped child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
    }

    /// Sends SIGKILL, then reaps the child.
    pub fn kill(self) -> Finished {
        let rss = peak_rss_kib(self.child.id());
        // SAFETY: kill(2) on the pid of our own unreaped child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL);
        }
        let mut f = self.wait();
        f.max_rss = rss.unwrap_or(0) * 1024;
        f
    }

    /// Reaps the child with `wait4` and collects its rusage and its `RESULT` line.
    pub fn wait(self) -> Finished {
        self.wait_at_most(None)
    }

    /// Like [`Running::wait`], but a child still running after `limit` (a hang) is killed; its
    /// [`Finished::hung`] says so.
    pub fn wait_at_most(mut self, limit: Option<Duration>) -> Finished {
        let pid = self.child.id() as libc::pid_t;
        let mut status: libc::c_int = 0;
        // SAFETY: rusage is plain old data; wait4 fills it for our own child.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let (mut hung, mut hung_rss) = (false, None);
        let mut wall = None;
        if let Some(limit) = limit {
            // Poll (every 2 ms: negligible against the runs measured) until the deadline.
            loop {
                let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
                if r == pid {
                    wall = Some(self.spawned.elapsed());
                    break;
                }
                if self.spawned.elapsed() > limit {
                    hung = true;
                    hung_rss = peak_rss_kib(self.child.id());
                    // SAFETY: kill(2) on the pid of our own unreaped child.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        if wall.is_none() {
            let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
            assert_eq!(r, pid, "wait4 failed: {}", std::io::Error::last_os_error());
        }
        let wall = wall.unwrap_or_else(|| self.spawned.elapsed());
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
        let mut result = serde_json::Value::Null;
        while let Ok((_, line)) = self.lines.try_recv() {
            if let Some(json) = line.strip_prefix("RESULT ") {
                result = serde_json::from_str(json).expect("RESULT line is JSON");
            }
        }
        let peak_kib = result["peak_rss_kib"].as_u64().or(hung_rss).unwrap_or(0);
        Finished {
            wall,
            cpu: timeval(usage.ru_utime) + timeval(usage.ru_stime),
            minor_faults: usage.ru_minflt as u64,
            max_rss: peak_kib * 1024,
            settled_rss: None,
            success: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            hung,
            result,
        }
    }
}

/// The median of the second half of RSS samples (what a process holds once its start is over;
/// the peak may be a transient). `None` without samples.
pub fn settled(samples: &[(Instant, u64)]) -> Option<u64> {
    let mut late: Vec<u64> = samples[samples.len() / 2..].iter().map(|s| s.1).collect();
    late.sort_unstable();
    late.get(late.len() / 2).copied()
}

/// Peak resident set size of a running process (`VmHWM`), KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resident set size of a running process now (`VmRSS`), KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Samples a process's `VmRSS` at a fixed interval on its own thread, until stopped or the
/// process is gone.
pub struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: JoinHandle<Vec<(Instant, u64)>>,
}

impl RssSampler {
    /// Starts sampling `pid` every `every`.
    pub fn start(pid: u32, every: Duration) -> RssSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                match rss_kib(pid) {
                    Some(kib) => samples.push((Instant::now(), kib * 1024)),
                    None => break,
                }
                std::thread::sleep(every);
            }
            samples
        });
        RssSampler { stop, thread }
    }

    /// Stops sampling: (when, RSS bytes) of every sample.
    pub fn finish(self) -> Vec<(Instant, u64)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("RSS sampler")
    }
}

fn timeval(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

/// CPU time (user + system) used so far by this process (`who` = `RUSAGE_SELF`) or by the calling
/// thread (`RUSAGE_THREAD`).
pub fn cpu_time(who: libc::c_int) -> Duration {
    usage(who).0
}

/// CPU time (user + system) and minor page faults so far, as [`cpu_time`].
pub fn usage(who: libc::c_int) -> (Duration, u64) {
    // SAFETY: rusage is plain old data that getrusage fills.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::getrusage(who, &mut usage) };
    assert_eq!(r, 0, "getrusage failed");
    (
        timeval(usage.ru_utime) + timeval(usage.ru_stime),
        usage.ru_minflt as u64,
    )
}

/// Lines in a file (NDJSON rows), 0 if it does not exist.
pub fn count_lines(path: &Path) -> u64 {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(path) else {
        return 0;
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0;
    loop {
        let got = f.read(&mut buf).expect("output file reads");
        if got == 0 {
            return n;
        }
        n += buf[..got].iter().filter(|b| **b == b'\n').count() as u64;
    }
}
