//! What the fixture tests (`fixtures.rs`, `detail_fixtures.rs`) share: a directory of fixture
//! files read by their path relative to it, the list of every file under it, and the check that
//! each file a test file lists is read by one of its tests.

use std::path::{Path, PathBuf};

/// A fixture directory (an absolute path).
pub struct Fixtures(pub &'static str);

impl Fixtures {
    /// The file at `rel`.
    pub fn path(&self, rel: &str) -> PathBuf {
        Path::new(self.0).join(rel)
    }

    /// The bytes of `rel`.
    pub fn bytes(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.path(rel)).unwrap_or_else(|e| panic!("reading fixture {rel}: {e}"))
    }

    /// The text of `rel`.
    pub fn text(&self, rel: &str) -> String {
        String::from_utf8(self.bytes(rel))
            .unwrap_or_else(|e| panic!("fixture {rel} is not UTF-8: {e}"))
    }

    /// Every file under the directory, relative to it with `/` between names, sorted.
    pub fn files(&self) -> Vec<String> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let p = entry.unwrap().path();
                if p.is_dir() {
                    walk(root, &p, out);
                } else {
                    let rel = p.strip_prefix(root).unwrap();
                    out.push(rel.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        let mut found = Vec::new();
        walk(Path::new(self.0), Path::new(self.0), &mut found);
        found.sort();
        found
    }
}

/// Each file of `covered` is named again in `source` (the test file's own text) besides the
/// list: a test reads it.
pub fn assert_each_is_read(covered: &[&str], source: &str) {
    for f in covered {
        let quoted = format!("\"{f}\"");
        assert!(
            source.matches(&quoted).count() >= 2,
            "{f} is listed in COVERED but no test reads it"
        );
    }
}
