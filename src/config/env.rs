//! `${VAR}` expansion on the parsed TOML value tree.
//!
//! Every string value may contain `${VAR}`; `cert_path` and `key_path` may also use the shell's
//! bare `$VAR`. `$$` is a literal `$`. Any other `$` is kept as it is, so that passwords with a
//! dollar sign survive. Keys are never expanded, nor are numbers or booleans. An unset variable is
//! an error naming the key and the variable, never a value.

use std::collections::BTreeSet;

use super::ConfigError;

/// Keys whose values may use bare `$VAR` as in a shell (paths, as in the documentation).
const BARE_VAR_KEYS: &[&str] = &["cert_path", "key_path"];

/// The process environment (a value that is not UTF-8 counts as unset).
pub(crate) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Expands every string of `tree` in place. A table value whose expansion failed is removed (and
/// an array item emptied) so that it is not reported again as missing or invalid.
pub(crate) fn expand_tree(
    tree: &mut toml::Value,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
    expanded: &mut BTreeSet<String>,
) {
    let mut walker = Walker {
        env,
        errors,
        expanded,
    };
    if let toml::Value::Table(table) = tree {
        walker.table(table, "");
    }
}

struct Walker<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    errors: &'a mut Vec<ConfigError>,
    expanded: &'a mut BTreeSet<String>,
}

impl Walker<'_> {
    fn table(&mut self, table: &mut toml::Table, prefix: &str) {
        let mut failed = Vec::new();
        for (key, value) in table.iter_mut() {
            let path = super::values::join(prefix, key);
            let bare = BARE_VAR_KEYS.contains(&key.as_str());
            if !self.value(value, &path, bare) {
                failed.push(key.clone());
            }
        }
        for key in failed {
            table.remove(&key);
        }
    }

    /// Returns `false` when `value` is a string whose expansion failed.
    fn value(&mut self, value: &mut toml::Value, path: &str, bare: bool) -> bool {
        match value {
            toml::Value::String(s) => self.string(s, path, bare),
            toml::Value::Table(t) => {
                self.table(t, path);
                true
            }
            toml::Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    let item_path = format!("{path}[{i}]");
                    if !self.value(item, &item_path, bare) {
                        *item = toml::Value::String(String::new());
                    }
                }
                true
            }
            _ => true,
        }
    }

    fn string(&mut self, s: &mut String, path: &str, bare: bool) -> bool {
        if !s.contains('$') {
            return true;
        }
        match expand(s, bare, self.env) {
            Ok(Expansion { text, substituted }) => {
                if substituted {
                    self.expanded.insert(path.to_owned());
                }
                *s = text;
                true
            }
            Err(problems) => {
                for problem in problems {
                    self.errors.push(ConfigError::new(path, problem));
                }
                false
            }
        }
    }
}

/// A successful expansion.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Expansion {
    /// The string with every reference replaced.
    pub text: String,
    /// Whether any variable was substituted (the text then holds environment data).
    pub substituted: bool,
}

/// Expands one string; `bare` also allows `$VAR`. Errors describe every problem found, without
/// values.
pub(crate) fn expand(
    input: &str,
    bare: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Expansion, Vec<String>> {
    let mut out = String::with_capacity(input.len());
    let mut problems = Vec::new();
    let mut substituted = false;
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let Some(close) = tail.find('}') else {
                problems.push(
                    "`${` without a closing `}`; write `${NAME}`, or `$$` for a literal dollar"
                        .to_owned(),
                );
                rest = "";
                break;
            };
            let name = &tail[..close];
            if is_var_name(name) {
                lookup(name, env, &mut out, &mut problems, &mut substituted);
            } else {
                problems.push(
                    "`${...}` must contain a variable name (letters, digits, `_`, not starting with a digit); \
                     write `$$` for a literal dollar"
                        .to_owned(),
                );
            }
            rest = &tail[close + 1..];
        } else if bare && after.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            lookup(
                &after[..len],
                env,
                &mut out,
                &mut problems,
                &mut substituted,
            );
            rest = &after[len..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    if problems.is_empty() {
        Ok(Expansion {
            text: out,
            substituted,
        })
    } else {
        Err(problems)
    }
}

fn lookup(
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
    out: &mut String,
    problems: &mut Vec<String>,
    substituted: &mut bool,
) {
    match env(name) {
        Some(value) => {
            out.push_str(&value);
            *substituted = true;
        }
        None => problems.push(format!(
            "environment variable `{name}` is not set; export it before starting msgtrace, \
             or write `$$` for a literal dollar"
        )),
    }
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".into()),
            "DIR" => Some("/etc/certs".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn ok(input: &str, bare: bool) -> String {
        expand(input, bare, &env).unwrap().text
    }

    #[test]
    fn braced_variables_everywhere() {
        assert_eq!(ok("${A}", false), "alpha");
        assert_eq!(ok("x-${A}-${A}y", false), "x-alpha-alphay");
        assert_eq!(ok("${EMPTY}", false), "");
        assert!(expand("${A}", false, &env).unwrap().substituted);
        assert!(!expand("plain", false, &env).unwrap().substituted);
    }

    #[test]
    fn dollar_escapes_and_lone_dollars() {
        assert_eq!(ok("$${A}", false), "${A}");
        assert_eq!(ok("pa$$word", false), "pa$word");
        assert_eq!(ok("pa$word", false), "pa$word");
        assert_eq!(ok("cost $5 $", false), "cost $5 $");
        assert!(!expand("$${A}", false, &env).unwrap().substituted);
    }

    #[test]
    fn bare_variables_only_where_allowed() {
        assert_eq!(ok("$DIR/app.pem", true), "/etc/certs/app.pem");
        assert_eq!(ok("$DIR/app.pem", false), "$DIR/app.pem");
        assert_eq!(ok("${DIR}/app.pem", true), "/etc/certs/app.pem");
        assert_eq!(ok("$$DIR", true), "$DIR");
        assert_eq!(ok("/x/$1", true), "/x/$1");
    }

    #[test]
    fn unset_and_malformed_references_are_errors_without_values() {
        let errs = expand("${NOPE} and ${ALSO_NOPE} ${A}", false, &env).unwrap_err();
        assert_eq!(errs.len(), 2);
        assert!(errs[0].contains("`NOPE`"));
        assert!(errs[1].contains("`ALSO_NOPE`"));
        assert!(!errs.iter().any(|e| e.contains("alpha")));
        assert!(expand("${A", false, &env).is_err());
        assert!(expand("${}", false, &env).is_err());
        assert!(expand("${1X}", false, &env).is_err());
        assert!(expand("$NOPE/x", true, &env).is_err());
    }

    #[test]
    fn tree_expansion_records_paths() {
        let mut tree: toml::Value = toml::from_str(
            "a = \"${A}\"\n[t]\nlist = [\"${NOPE}\", \"${A}\"]\ncert_path = \"$DIR/c\"\ngone = \"${NOPE}\"\nn = 5\n",
        )
        .unwrap();
        let mut errors = Vec::new();
        let mut expanded = BTreeSet::new();
        expand_tree(&mut tree, &env, &mut errors, &mut expanded);
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["t.gone", "t.list[0]"]);
        assert_eq!(tree["a"].as_str(), Some("alpha"));
        assert_eq!(tree["t"]["cert_path"].as_str(), Some("/etc/certs/c"));
        assert!(tree["t"].get("gone").is_none());
        assert_eq!(tree["t"]["list"][0].as_str(), Some(""));
        assert!(
            expanded.contains("a")
                && expanded.contains("t.list[1]")
                && expanded.contains("t.cert_path")
        );
    }
}
