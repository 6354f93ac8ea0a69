//! `msgtrace backfill`: a past range, its own resumable checkpoint, the continuous cursor left
//! alone.

use crate::common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn backfill_collects_a_past_range_resumes_after_sigkill_and_leaves_the_cursor_alone() {
    let page_size = 50;
    let h = Harness::graph()
        .sim(|c| c.page_latency_ms = 30)
        .window(&hours_ago(3), &hours_ago(1))
        .page_size(page_size)
        .build();
    let (out, cfg) = (&h.out, h.write_config());
    let bin = env!("CARGO_BIN_EXE_msgtrace");
    let c = cfg.to_str().unwrap();
    // The continuous cursor first.
    let o = Command::new(bin)
        .args(["run", "--once", "-c", c])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cursor = h.store().checkpoint("src").unwrap().unwrap();

    let (bs, be) = (hours_ago(72), hours_ago(48));
    let args = [
        "backfill", "-c", c, "--source", "src", "--start", &bs, "--end", &be,
    ];
    // Killed mid-way...
    let mut child = Command::new(bin)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    assert!(child.try_wait().unwrap().is_none(), "still backfilling");
    child.kill().unwrap();
    child.wait().unwrap();
    // ...and resumed by running the same command again.
    let o = Command::new(bin).args(args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("Succeeded"));

    let store = h.store();
    assert_eq!(
        store.checkpoint("src").unwrap().unwrap().cursor,
        cursor.cursor,
        "the continuous cursor did not move"
    );
    let (s, e) = (
        chrono::DateTime::from_timestamp(bs.parse().unwrap(), 0).unwrap(),
        chrono::DateTime::from_timestamp(be.parse().unwrap(), 0).unwrap(),
    );
    let bf = store
        .checkpoint(&format!("backfill/src/{bs}-{be}"))
        .unwrap()
        .expect("backfill checkpoint");
    assert_eq!(bf.cursor, Some(e));
    let mut expected = h.sim().model().expected(s, e, chrono::Utc::now());
    let (cs, ce) = (
        chrono::DateTime::from_timestamp(hours_ago(3).parse().unwrap(), 0).unwrap(),
        cursor.cursor.unwrap(),
    );
    expected.extend(h.sim().model().expected(cs, ce, chrono::Utc::now()));
    drop(store);
    let (missing, extra, dups) = compare(&h.identities(), &expected);
    assert_eq!((missing, extra), (0, 0));
    assert!(
        dups <= page_size as usize,
        "at most the page in flight at the kill: {dups}"
    );

    // The same backfill again finds it complete: nothing fetched twice.
    let before = std::fs::read_to_string(out).unwrap().lines().count();
    let o = Command::new(bin).args(args).output().unwrap();
    assert!(o.status.success());
    assert_eq!(
        std::fs::read_to_string(out).unwrap().lines().count(),
        before
    );

    // A bad range is a usage error.
    let o = Command::new(bin)
        .args([
            "backfill", "-c", c, "--source", "nope", "--start", "-2d", "--end", "-1d",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("known sources: src"));
}
