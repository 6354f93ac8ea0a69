//! Reading a whole state directory for humans and machines (`msgtrace-dump`).
//!
//! sled's own `Db::export` panics on I/O errors, so the trees are walked here one by one.
//! Secrets never leave this module: the `secrets` tree's values and any JSON field whose name
//! says it holds a secret are replaced by `"<redacted>"`.

use crate::{Result, StorageError, Store};
use serde::Serialize;

/// One record of a tree.
#[derive(Debug, Serialize)]
pub struct DumpRecord {
    /// The key, as text (NUL separators shown as `/`).
    pub key: String,
    /// The record's version tag, when it has one.
    pub version: Option<String>,
    /// The value: JSON when it decodes as JSON, else a string.
    pub value: serde_json::Value,
}

/// One tree of the database.
#[derive(Debug, Serialize)]
pub struct DumpTree {
    /// The tree's name.
    pub name: String,
    /// Its records in key order.
    pub records: Vec<DumpRecord>,
}

const SECRET_TREES: &[&str] = &["secrets"];
const SECRET_FIELDS: &[&str] = &[
    "secret",
    "password",
    "passphrase",
    "token",
    "access_token",
    "client_secret",
    "key",
];

/// Reads every tree (or only `only`), secrets redacted.
pub fn dump(store: &Store, only: Option<&str>) -> Result<Vec<DumpTree>> {
    let db = store.db();
    let mut out = Vec::new();
    let mut names: Vec<String> = db
        .tree_names()
        .into_iter()
        .map(|n| String::from_utf8_lossy(&n).into_owned())
        .filter(|n| n != "__sled__default")
        .collect();
    names.sort();
    for name in names {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let tree = db.open_tree(&name).map_err(|error| StorageError::Sled {
            dir: store.dir().to_path_buf(),
            error,
        })?;
        let secret_tree = SECRET_TREES.contains(&name.as_str());
        let mut records = Vec::new();
        for item in tree.iter() {
            let (k, v) = item.map_err(|error| StorageError::Sled {
                dir: store.dir().to_path_buf(),
                error,
            })?;
            let key = String::from_utf8_lossy(&k).replace('\0', "/");
            let (version, value) = if secret_tree {
                (None, serde_json::Value::String("<redacted>".into()))
            } else {
                match serde_json::from_slice::<serde_json::Value>(&v) {
                    Ok(mut json) => {
                        redact(&mut json);
                        let version = json
                            .get("version")
                            .and_then(|v| v.as_str())
                            .map(str::to_owned);
                        (version, json)
                    }
                    Err(_) => (
                        None,
                        serde_json::Value::String(String::from_utf8_lossy(&v).into_owned()),
                    ),
                }
            };
            records.push(DumpRecord {
                key,
                version,
                value,
            });
        }
        out.push(DumpTree { name, records });
    }
    Ok(out)
}

fn redact(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                let lower = k.to_ascii_lowercase();
                if SECRET_FIELDS
                    .iter()
                    .any(|s| lower == *s || lower.ends_with(&format!("_{s}")))
                {
                    *val = serde_json::Value::String("<redacted>".into());
                } else {
                    redact(val);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// What `msgtrace-dump` prints for a state directory (or only the tree `only`): pretty JSON when
/// `json`, else [`render_text`]. `None` when `only` names no tree. The running engine's control
/// API answers with the same text, so the tool prints the same whether the engine runs or not.
pub fn print(store: &Store, only: Option<&str>, json: bool) -> Result<Option<String>> {
    let trees = dump(store, only)?;
    if only.is_some() && trees.is_empty() {
        return Ok(None);
    }
    Ok(Some(if json {
        // A tree of `serde_json::Value`s with string keys always serializes.
        serde_json::to_string_pretty(&trees).unwrap_or_default() + "\n"
    } else if only.is_none_or(|t| t == crate::DETAILS) {
        render_text(&trees) + &render_backlogs(&store.details_backlogs()?)
    } else {
        render_text(&trees)
    }))
}

/// Renders a dump as readable text: one block per tree, one line per record.
pub fn render_text(trees: &[DumpTree]) -> String {
    let mut s = String::new();
    for t in trees {
        s.push_str(&format!(
            "== tree {} ({} records)\n",
            t.name,
            t.records.len()
        ));
        for r in &t.records {
            let v = match &r.value {
                serde_json::Value::String(s) => s.clone(),
                other => serde_json::to_string(other).unwrap_or_default(),
            };
            match &r.version {
                Some(ver) => s.push_str(&format!("{} [v{}] {}\n", r.key, ver, v)),
                None => s.push_str(&format!("{} {}\n", r.key, v)),
            }
        }
    }
    s
}

/// The details backlog of each source, in a line each (`msgtrace-dump`'s text ends with it when
/// there is one).
pub fn render_backlogs(backlogs: &[(String, usize)]) -> String {
    let mut s = String::new();
    if !backlogs.is_empty() {
        s.push_str("== details backlog per source\n");
        for (source, n) in backlogs {
            s.push_str(&format!("{source} {n}\n"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_secret_trees_and_fields() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .db()
            .open_tree("secrets")
            .unwrap()
            .insert("s1", &b"hunter2"[..])
            .unwrap();
        store
            .db()
            .open_tree("misc")
            .unwrap()
            .insert(
                "k",
                &br#"{"version":"1","client_secret":"hunter2","nested":{"password":"x"},"ok":1}"#[..],
            )
            .unwrap();
        let trees = dump(&store, None).unwrap();
        let text = render_text(&trees);
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("== tree secrets (1 records)"));
        assert!(text.contains("k [v1]"));
        let json = serde_json::to_string(&trees).unwrap();
        assert!(!json.contains("hunter2"));
        let only = dump(&store, Some("misc")).unwrap();
        assert_eq!(only.len(), 1);
    }

    #[test]
    fn the_text_ends_with_the_details_backlog_per_source() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let plain = print(&store, None, false).unwrap().unwrap();
        assert!(!plain.contains("details backlog"), "{plain}");
        let entry = crate::DetailEntry {
            received: chrono::DateTime::from_timestamp(0, 0).unwrap(),
            trace_id: "t".into(),
            recipient: "r@x".into(),
            status: "Failed".into(),
        };
        store
            .write(&crate::Commit {
                source: "contoso",
                details: &[entry],
                ..crate::Commit::default()
            })
            .unwrap();
        let text = print(&store, None, false).unwrap().unwrap();
        assert!(text.contains("== tree details (1 records)"), "{text}");
        assert!(
            text.ends_with("== details backlog per source\ncontoso 1\n"),
            "{text}"
        );
        let only = print(&store, Some("checkpoints"), false).unwrap().unwrap();
        assert!(!only.contains("details backlog"), "{only}");
    }
}
