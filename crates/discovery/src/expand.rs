//! Placeholder expansion in config values. Nothing is ever executed.
//!
//! * `${VAR}` and `${VAR:-default}` (Claude Code; default used when VAR is unset or empty)
//! * `${env:VAR}` (Cursor, Windsurf, VS Code)
//! * `${workspaceFolder}` → the project dir, `${userHome}` → home (VS Code)
//! * `${input:id}` is left as written (VS Code prompts the user for it) and reported.
//!
//! Anything unresolvable is left exactly as written and reported as a [`Note`].

use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Note {
    /// `${input:id}` left unexpanded.
    Input(String),
    /// `${VAR}` / `${env:VAR}` with VAR unset and no default.
    UnsetVar(String),
    /// `${workspaceFolder}` outside a project.
    NoWorkspace,
}

impl Note {
    pub(crate) fn message(&self, server: &str) -> String {
        match self {
            Note::Input(id) => format!(
                "server `{server}` uses `${{input:{id}}}`, a value VS Code prompts for; it was left unexpanded"
            ),
            Note::UnsetVar(v) => format!(
                "server `{server}` uses environment variable `{v}`, which is not set for Airlock; \
                 it was left unexpanded (set it in Airlock's environment or give a default with `${{{v}:-value}}`)"
            ),
            Note::NoWorkspace => format!(
                "server `{server}` uses `${{workspaceFolder}}` outside a project; it was left unexpanded"
            ),
        }
    }
}

pub(crate) struct Expander<'a> {
    pub vars: &'a BTreeMap<String, String>,
    pub home: &'a Path,
    pub workspace: Option<&'a Path>,
    pub notes: Vec<Note>,
}

fn is_var_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Expander<'_> {
    pub(crate) fn expand(&mut self, input: &str) -> String {
        let mut out = String::with_capacity(input.len());
        let mut rest = input;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                out.push_str(&rest[start..]);
                return out;
            };
            let inner = &after[..end];
            let whole = &rest[start..start + 2 + end + 1];
            match self.resolve(inner) {
                Some(v) => out.push_str(&v),
                None => out.push_str(whole),
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        out
    }

    fn var(&self, name: &str) -> Option<&String> {
        self.vars.get(name)
    }

    fn resolve(&mut self, inner: &str) -> Option<String> {
        if let Some(id) = inner.strip_prefix("input:") {
            self.note(Note::Input(id.to_string()));
            return None;
        }
        if let Some(name) = inner.strip_prefix("env:") {
            return match self.var(name) {
                Some(v) => Some(v.clone()),
                None => {
                    self.note(Note::UnsetVar(name.to_string()));
                    None
                }
            };
        }
        match inner {
            "workspaceFolder" | "workspaceRoot" => {
                return match self.workspace {
                    Some(w) => Some(w.display().to_string()),
                    None => {
                        self.note(Note::NoWorkspace);
                        None
                    }
                };
            }
            "workspaceFolderBasename" => {
                return self
                    .workspace
                    .and_then(|w| w.file_name())
                    .map(|n| n.to_string_lossy().into_owned());
            }
            "userHome" => return Some(self.home.display().to_string()),
            _ => {}
        }
        if let Some((name, default)) = inner.split_once(":-") {
            if is_var_name(name) {
                return Some(match self.var(name) {
                    Some(v) if !v.is_empty() => v.clone(),
                    _ => default.to_string(),
                });
            }
            return None;
        }
        if is_var_name(inner) {
            return match self.var(inner) {
                Some(v) => Some(v.clone()),
                None => {
                    self.note(Note::UnsetVar(inner.to_string()));
                    None
                }
            };
        }
        None
    }

    fn note(&mut self, n: Note) {
        if !self.notes.contains(&n) {
            self.notes.push(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_all_forms() {
        let vars = BTreeMap::from([
            ("A".to_string(), "1".to_string()),
            ("EMPTY".to_string(), String::new()),
        ]);
        let home = Path::new("/h");
        let ws = Path::new("/p/proj");
        let mut e = Expander {
            vars: &vars,
            home,
            workspace: Some(ws),
            notes: vec![],
        };
        assert_eq!(e.expand("x${A}y"), "x1y");
        assert_eq!(e.expand("${B:-dflt}/${A:-no}"), "dflt/1");
        assert_eq!(e.expand("${EMPTY:-d}"), "d");
        assert_eq!(e.expand("${env:A}"), "1");
        assert_eq!(e.expand("${workspaceFolder}/x"), "/p/proj/x");
        assert_eq!(e.expand("${userHome}"), "/h");
        assert_eq!(e.expand("${input:tok}"), "${input:tok}");
        assert_eq!(e.expand("${MISSING}"), "${MISSING}");
        assert_eq!(e.expand("$A ${ unterminated"), "$A ${ unterminated");
        assert_eq!(
            e.notes,
            vec![Note::Input("tok".into()), Note::UnsetVar("MISSING".into())]
        );
    }
}
