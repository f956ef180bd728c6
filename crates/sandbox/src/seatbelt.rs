//! The macOS sandbox: a Seatbelt profile (SBPL) generated from the session's policy and applied
//! by `/usr/bin/sandbox-exec -p <profile> /bin/bash …`.
//!
//! The profile starts from `(deny default)` and allows only:
//! * process fork/exec, signals and process info within the sandbox, sysctl reads, POSIX
//!   semaphores;
//! * reads of the system locations bash and common tools need (`/usr`, `/bin`, `/sbin`,
//!   `/System` without the data volume's second name, `/Library` without `/Library/Keychains`,
//!   `/opt/homebrew`, `/opt/local`, Xcode, `/private/etc` without its secrets, the timezone
//!   database, a few `/dev` nodes), never anything inside the user's home;
//! * reads of the workdir, the writable roots, the private temporary directory and the
//!   allowlisted read-only paths; metadata (not contents) of their ancestors, so `realpath` and
//!   `pwd` work;
//! * writes to the workdir, the writable roots and the private temporary directory only, minus
//!   every file that steers other tools (the crate's one protected list: `.mcp.json`,
//!   `.git/config`, `.git/hooks`, `.vscode/`, shell rc files, …), matched by name anywhere and
//!   case-insensitively (APFS is case-insensitive), created or existing;
//! * the Mach services libc needs for user/group look-ups and notifications — nothing else (no
//!   keychain: `com.apple.SecurityServer`, `securityd`, `secd`, `trustd` are denied explicitly);
//! * no network at all, except `localhost:<port>` of the egress proxy's loopback forwarder when
//!   domains are allowlisted.
//!
//! Allow rules never overlap the deny rules that follow them (each allow carries its exceptions
//! as `require-not`), so the profile means the same whichever rule precedence the kernel's
//! evaluator applies.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use tokio::net::{TcpListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::SandboxError;
use crate::paths::{PROTECTED_DIRS, PROTECTED_NAMES, PROTECTED_NESTED};

/// The program that applies a profile.
pub const SANDBOX_EXEC: &str = "/usr/bin/sandbox-exec";

/// System locations readable inside the sandbox (macOS paths, canonical form).
const SYSTEM_READ: [&str; 12] = [
    "/usr",
    "/bin",
    "/sbin",
    "/System",
    "/Library",
    "/opt/homebrew",
    "/opt/local",
    "/Applications/Xcode.app",
    "/private/var/db/timezone",
    "/private/var/db/dyld",
    "/private/var/select",
    "/private/etc",
];

/// Single files readable inside the sandbox (symlinks of the root, device nodes).
const SYSTEM_READ_LITERAL: [&str; 13] = [
    "/",
    "/etc",
    "/tmp",
    "/var",
    "/private/var/db/xcode_select_link",
    "/dev/null",
    "/dev/zero",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/stdin",
    "/dev/stdout",
    "/dev/stderr",
];

/// Device nodes writable inside the sandbox.
const DEV_WRITE: [&str; 5] = [
    "/dev/null",
    "/dev/zero",
    "/dev/tty",
    "/dev/stdout",
    "/dev/stderr",
];

/// Parts of the readable system locations that stay hidden.
const SYSTEM_HIDDEN: [&str; 5] = [
    "/Library/Keychains",
    "/private/etc/ssl/private",
    "/private/etc/master.passwd",
    "/private/etc/kcpassword",
    // The data volume under its own name: home directories, /opt, /usr/local again.
    "/System/Volumes/Data",
];

/// Mach services bash, libc and the usual command-line tools need.
const MACH_ALLOWED: [&str; 3] = [
    "com.apple.system.opendirectoryd.libinfo",
    "com.apple.system.opendirectoryd.membership",
    "com.apple.system.notification_center",
];

/// Mach services denied explicitly (keychain and credential daemons); everything not in
/// [`MACH_ALLOWED`] is denied anyway.
const MACH_DENIED: [&str; 6] = [
    "com.apple.SecurityServer",
    "com.apple.securityd",
    "com.apple.securityd.xpc",
    "com.apple.secd",
    "com.apple.trustd",
    "com.apple.trustd.agent",
];

/// What one session's profile grants. Paths should be canonical (the generator canonicalizes
/// what exists and maps `/var`, `/tmp`, `/etc` to `/private/…` for what does not).
#[derive(Debug, Clone, Default)]
pub struct SeatbeltPolicy {
    /// The session's workdir: readable and writable.
    pub workdir: PathBuf,
    /// Extra writable roots (memory stores).
    pub writable_roots: Vec<PathBuf>,
    /// Paths the user allowlisted: readable only.
    pub read_only_paths: Vec<PathBuf>,
    /// The sandbox's private temporary directory (`TMPDIR`): readable and writable.
    pub private_tmp: Option<PathBuf>,
    /// The user's home: nothing of it is readable except the roots above.
    pub user_home: Option<PathBuf>,
    /// Port of the egress proxy on loopback; `None` = no network at all.
    pub proxy_port: Option<u16>,
}

/// The SBPL profile for `policy`. Fails (rather than dropping a rule) when a path cannot be
/// written as an SBPL string: not UTF-8, or containing control characters.
pub fn profile(policy: &SeatbeltPolicy) -> Result<String, SandboxError> {
    let workdir = canonical(&policy.workdir);
    if workdir == Path::new("/") {
        return Err(SandboxError::Config(
            "the filesystem root cannot be a sandbox workdir".into(),
        ));
    }
    let mut writable = vec![workdir.clone()];
    writable.extend(policy.writable_roots.iter().map(|p| canonical(p)));
    if let Some(t) = &policy.private_tmp {
        writable.push(canonical(t));
    }
    let read_only: Vec<PathBuf> = policy
        .read_only_paths
        .iter()
        .map(|p| canonical(p))
        .collect();
    let home = policy.user_home.as_deref().map(canonical);

    let mut out = String::with_capacity(8 * 1024);
    out.push_str("(version 1)\n(deny default)\n\n");

    out.push_str(";; processes\n");
    out.push_str("(allow process-exec)\n(allow process-fork)\n");
    out.push_str("(allow signal (target same-sandbox))\n");
    out.push_str("(allow process-info* (target same-sandbox))\n");
    out.push_str("(allow sysctl-read)\n(allow ipc-posix-sem)\n\n");

    // System locations, never the home (nor anything hidden) even if it lies below one.
    out.push_str(";; system locations (read-only)\n");
    let mut hidden: Vec<String> = SYSTEM_HIDDEN
        .iter()
        .map(|s| subpath(s))
        .collect::<Result<_, _>>()?;
    for name in crate::isolation::ETC_SECRETS {
        if name != "ssl" {
            hidden.push(subpath(&format!("/private/etc/{name}"))?);
        }
    }
    if let Some(h) = &home {
        hidden.push(subpath_of(h)?);
    }
    let system: Vec<String> = SYSTEM_READ
        .iter()
        .map(|s| subpath(s))
        .collect::<Result<_, _>>()?;
    let literals: Vec<String> = SYSTEM_READ_LITERAL
        .iter()
        .map(|s| literal(s))
        .collect::<Result<_, _>>()?;
    out.push_str(&format!(
        "(allow file-read* file-map-executable\n  (require-all\n    (require-any\n      {}\n      {})\n    (require-not (require-any\n      {}))))\n",
        system.join("\n      "),
        literals.join("\n      "),
        hidden.join("\n      ")
    ));
    out.push_str(&format!(
        "(allow file-read* file-write* (subpath \"/dev/fd\"))\n(allow file-write* file-ioctl\n  {})\n\n",
        DEV_WRITE
            .iter()
            .map(|s| literal(s))
            .collect::<Result<Vec<_>, _>>()?
            .join("\n  ")
    ));

    // Metadata of the ancestors of every root (`realpath`, `pwd -P`, `test -d`), not listings.
    let mut ancestors: Vec<PathBuf> = Vec::new();
    for root in writable.iter().chain(read_only.iter()) {
        for a in root.ancestors().skip(1) {
            if !ancestors.iter().any(|x| x == a) {
                ancestors.push(a.to_path_buf());
            }
        }
    }
    ancestors.sort();
    if !ancestors.is_empty() {
        out.push_str(";; ancestors of the roots (metadata only)\n(allow file-read-metadata\n");
        for a in &ancestors {
            out.push_str(&format!("  {}\n", literal_of(a)?));
        }
        out.push_str(")\n\n");
    }

    if !read_only.is_empty() {
        out.push_str(";; allowlisted paths (read-only)\n(allow file-read* file-map-executable\n");
        for p in &read_only {
            out.push_str(&format!("  {}\n", subpath_of(p)?));
        }
        out.push_str(")\n\n");
    }

    out.push_str(
        ";; workdir, writable roots, private tmp\n(allow file-read* file-map-executable\n",
    );
    for p in &writable {
        out.push_str(&format!("  {}\n", subpath_of(p)?));
    }
    out.push_str(")\n");
    let protected = protected_regexes();
    // A read-only path inside a writable root stays read-only.
    let mut not_writable: Vec<String> = protected
        .iter()
        .map(|r| format!("(regex #\"{r}\")"))
        .collect();
    for p in &read_only {
        if writable.iter().any(|w| p.starts_with(w)) {
            not_writable.push(subpath_of(p)?);
        }
    }
    out.push_str("(allow file-write*\n  (require-all\n    (require-any\n");
    for p in &writable {
        out.push_str(&format!("      {}\n", subpath_of(p)?));
    }
    out.push_str(&format!(
        "    )\n    (require-not (require-any\n      {}))))\n\n",
        not_writable.join("\n      ")
    ));

    out.push_str(";; files that steer other tools: never written\n");
    for r in &protected {
        out.push_str(&format!("(deny file-write* (regex #\"{r}\"))\n"));
    }
    out.push('\n');

    out.push_str(
        ";; Mach services: the minimum libc needs, never the keychain\n(allow mach-lookup\n",
    );
    for m in MACH_ALLOWED {
        out.push_str(&format!("  (global-name {})\n", string(m)?));
    }
    out.push_str(")\n(deny mach-lookup\n");
    for m in MACH_DENIED {
        out.push_str(&format!("  (global-name {})\n", string(m)?));
    }
    out.push_str(
        ")\n(allow ipc-posix-shm-read-data (ipc-posix-name \"apple.shm.notification_center\"))\n\n",
    );

    out.push_str(";; network\n");
    match policy.proxy_port {
        Some(port) => out.push_str(&format!(
            "(allow network-outbound (remote tcp \"localhost:{port}\"))\n"
        )),
        None => out.push_str(";; none\n"),
    }
    Ok(out)
}

/// `p` canonical: resolved when it exists, else with the macOS root symlinks (`/var`, `/tmp`,
/// `/etc`) mapped to `/private/…` and `.`/`..` removed lexically.
fn canonical(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    for link in ["var", "tmp", "etc"] {
        if let Ok(rest) = out.strip_prefix(Path::new("/").join(link)) {
            return Path::new("/private").join(link).join(rest);
        }
    }
    out
}

/// An SBPL string literal: `"` and `\` escaped; control characters and non-UTF-8 refused.
fn string(s: &str) -> Result<String, SandboxError> {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                return Err(SandboxError::Config(format!(
                    "path {s:?} contains a control character and cannot be expressed in the macOS sandbox profile; rename it"
                )));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(out)
}

fn path_str(p: &Path) -> Result<&str, SandboxError> {
    p.to_str().ok_or_else(|| {
        SandboxError::Config(format!(
            "path {} is not valid UTF-8 and cannot be expressed in the macOS sandbox profile; rename it",
            p.display()
        ))
    })
}

fn subpath(s: &str) -> Result<String, SandboxError> {
    Ok(format!("(subpath {})", string(s)?))
}

fn literal(s: &str) -> Result<String, SandboxError> {
    Ok(format!("(literal {})", string(s)?))
}

fn subpath_of(p: &Path) -> Result<String, SandboxError> {
    subpath(path_str(p)?)
}

fn literal_of(p: &Path) -> Result<String, SandboxError> {
    literal(path_str(p)?)
}

/// A case-insensitive regex fragment matching `name` literally.
fn regex_name(name: &str) -> String {
    let mut out = String::new();
    for ch in name.chars() {
        if ch.is_ascii_alphabetic() {
            out.push('[');
            out.push(ch.to_ascii_lowercase());
            out.push(ch.to_ascii_uppercase());
            out.push(']');
        } else if ch.is_ascii_alphanumeric() || ch == '_' || ch == '-' {
            out.push(ch);
        } else {
            out.push('\\');
            out.push(ch);
        }
    }
    out
}

/// Regexes (SBPL `#"…"` bodies) of every protected path: the crate's protected names and
/// directories anywhere (the entry itself and anything below it), the nested entries
/// (`.git/config`, …), and the parents of nested entries themselves (renaming `.git` away and
/// back would otherwise bypass `.git/config`).
pub(crate) fn protected_regexes() -> Vec<String> {
    let mut out = Vec::new();
    let mut push_entry = |rel: String| {
        out.push(format!("/{rel}$"));
        out.push(format!("/{rel}/"));
    };
    for n in PROTECTED_NAMES.iter().chain(PROTECTED_DIRS.iter()) {
        push_entry(regex_name(n));
    }
    for (parent, child) in PROTECTED_NESTED {
        push_entry(format!("{}/{}", regex_name(parent), regex_name(child)));
    }
    let mut parents: Vec<&str> = PROTECTED_NESTED.iter().map(|(p, _)| *p).collect();
    parents.dedup();
    for p in parents {
        out.push(format!("/{}$", regex_name(p)));
    }
    out
}

/// Whether `sandbox-exec` is present (macOS).
pub(crate) fn find_sandbox_exec() -> Result<PathBuf, String> {
    let p = PathBuf::from(SANDBOX_EXEC);
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!("{SANDBOX_EXEC} not found"))
    }
}

/// Connections one forwarder carries at a time.
const MAX_FORWARDS: usize = 128;

/// A loopback TCP port forwarding to the egress proxy's unix socket: Seatbelt has no network
/// namespace, so the proxy is reached at `127.0.0.1:<port>`, the one network destination the
/// profile allows. Stopped on drop.
#[derive(Debug)]
pub struct LoopbackForward {
    port: u16,
    stop: CancellationToken,
}

impl Drop for LoopbackForward {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl LoopbackForward {
    /// Listen on `127.0.0.1:0` and forward every connection to `socket`.
    pub async fn start(socket: PathBuf) -> Result<Self, SandboxError> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| SandboxError::io("binding the proxy forwarder on 127.0.0.1", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| SandboxError::io("the proxy forwarder's address", e))?
            .port();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let socket = Arc::new(socket);
        tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(MAX_FORWARDS));
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = token.cancelled() => break,
                };
                let Ok((mut tcp, _)) = accepted else { continue };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    continue;
                };
                let socket = socket.clone();
                let token = token.clone();
                tokio::spawn(async move {
                    if let Ok(mut unix) = UnixStream::connect(&*socket).await {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix) => {}
                            _ = token.cancelled() => {}
                        }
                    }
                    drop(permit);
                });
            }
        });
        Ok(Self { port, stop })
    }

    /// The loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// An SBPL s-expression, as far as the generated profiles use the language.
    #[derive(Debug, Clone, PartialEq)]
    enum Sx {
        List(Vec<Sx>),
        Atom(String),
        Str(String),
        Regex(String),
    }

    /// A strict tokenizer/parser: balanced parens, terminated strings, nothing after the end.
    fn parse(src: &str) -> Result<Vec<Sx>, String> {
        let chars: Vec<char> = src.chars().collect();
        let mut i = 0;
        let mut stack: Vec<Vec<Sx>> = vec![Vec::new()];
        while i < chars.len() {
            let c = chars[i];
            match c {
                ';' => {
                    while i < chars.len() && chars[i] != '\n' {
                        i += 1;
                    }
                }
                '(' => {
                    stack.push(Vec::new());
                    i += 1;
                }
                ')' => {
                    let done = stack.pop().ok_or("unbalanced )")?;
                    stack
                        .last_mut()
                        .ok_or(format!("unbalanced ) at {i}"))?
                        .push(Sx::List(done));
                    i += 1;
                }
                '"' => {
                    i += 1;
                    let mut s = String::new();
                    loop {
                        let c = *chars.get(i).ok_or("unterminated string")?;
                        i += 1;
                        match c {
                            '\\' => {
                                s.push(*chars.get(i).ok_or("dangling escape")?);
                                i += 1;
                            }
                            '"' => break,
                            c => s.push(c),
                        }
                    }
                    stack.last_mut().ok_or("stack")?.push(Sx::Str(s));
                }
                '#' if chars.get(i + 1) == Some(&'"') => {
                    i += 2;
                    let mut s = String::new();
                    loop {
                        let c = *chars.get(i).ok_or("unterminated regex")?;
                        i += 1;
                        match c {
                            '\\' => {
                                s.push('\\');
                                s.push(*chars.get(i).ok_or("dangling escape")?);
                                i += 1;
                            }
                            '"' => break,
                            c => s.push(c),
                        }
                    }
                    stack.last_mut().ok_or("stack")?.push(Sx::Regex(s));
                }
                c if c.is_whitespace() => i += 1,
                _ => {
                    let mut s = String::new();
                    while i < chars.len()
                        && !chars[i].is_whitespace()
                        && !matches!(chars[i], '(' | ')' | '"' | ';')
                    {
                        s.push(chars[i]);
                        i += 1;
                    }
                    stack.last_mut().ok_or("stack")?.push(Sx::Atom(s));
                }
            }
        }
        if stack.len() != 1 {
            return Err(format!("{} unclosed (", stack.len() - 1));
        }
        Ok(stack.pop().unwrap_or_default())
    }

    fn atom(s: &str) -> Sx {
        Sx::Atom(s.into())
    }

    fn contains_allow_default(x: &Sx) -> bool {
        match x {
            Sx::List(items) => {
                items.len() == 2 && items[0] == atom("allow") && items[1] == atom("default")
                    || items.iter().any(contains_allow_default)
            }
            _ => false,
        }
    }

    /// A query against the profile.
    enum Q<'a> {
        File(&'a str),
        Mach(&'a str),
        Remote(&'a str),
    }

    fn filter_matches(f: &Sx, q: &Q) -> bool {
        let Sx::List(items) = f else { return false };
        let Some(Sx::Atom(head)) = items.first() else {
            return false;
        };
        let arg = items.get(1);
        match (head.as_str(), arg, q) {
            ("literal", Some(Sx::Str(s)), Q::File(p)) => p == s,
            ("subpath", Some(Sx::Str(s)), Q::File(p)) => {
                p == s || p.starts_with(&format!("{}/", s.trim_end_matches('/')))
            }
            ("regex", Some(Sx::Regex(r)), Q::File(p)) => compiled(r).is_match(p),
            ("global-name", Some(Sx::Str(s)), Q::Mach(m)) => m == s,
            ("remote", Some(Sx::Atom(proto)), Q::Remote(r)) => {
                proto == "tcp" && items.get(2) == Some(&Sx::Str((*r).to_owned()))
            }
            ("require-all", _, _) => items[1..].iter().all(|f| filter_matches(f, q)),
            ("require-any", _, _) => items[1..].iter().any(|f| filter_matches(f, q)),
            ("require-not", Some(inner), _) => !filter_matches(inner, q),
            _ => false,
        }
    }

    fn compiled(r: &str) -> regex::Regex {
        thread_local! {
            static CACHE: std::cell::RefCell<std::collections::HashMap<String, regex::Regex>> =
                Default::default();
        }
        CACHE.with(|c| {
            c.borrow_mut()
                .entry(r.to_owned())
                .or_insert_with(|| regex::Regex::new(r).unwrap())
                .clone()
        })
    }

    fn op_matches(rule_op: &str, op: &str) -> bool {
        match rule_op.strip_suffix('*') {
            Some(prefix) => op.starts_with(prefix),
            None => rule_op == op,
        }
    }

    /// The decision for `op` on `q`. Panics when an allow and a deny rule both match (the
    /// answer would then depend on the evaluator's precedence).
    fn allowed(profile: &[Sx], op: &str, q: Q) -> bool {
        let (mut allow, mut deny) = (false, false);
        for form in profile {
            let Sx::List(items) = form else { continue };
            let action = match items.first() {
                Some(a) if *a == atom("allow") => true,
                Some(a) if *a == atom("deny") => false,
                _ => continue,
            };
            let ops: Vec<&str> = items[1..]
                .iter()
                .filter_map(|x| match x {
                    Sx::Atom(a) => Some(a.as_str()),
                    _ => None,
                })
                .collect();
            if ops == ["default"] || !ops.iter().any(|o| op_matches(o, op)) {
                continue;
            }
            let filters: Vec<&Sx> = items[1..]
                .iter()
                .filter(|x| matches!(x, Sx::List(_)))
                .collect();
            if filters.is_empty() || filters.iter().any(|f| filter_matches(f, &q)) {
                if action {
                    allow = true;
                } else {
                    deny = true;
                }
            }
        }
        assert!(!(allow && deny), "allow and deny rules overlap for {op}");
        allow && !deny
    }

    struct Checked {
        forms: Vec<Sx>,
        text: String,
    }

    impl Checked {
        fn new(policy: &SeatbeltPolicy) -> Self {
            let text = profile(policy).unwrap();
            let forms = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(forms[0], Sx::List(vec![atom("version"), atom("1")]));
            assert_eq!(forms[1], Sx::List(vec![atom("deny"), atom("default")]));
            for f in &forms {
                let Sx::List(items) = f else {
                    panic!("top-level non-list {f:?}")
                };
                assert!(
                    [atom("version"), atom("allow"), atom("deny")].contains(&items[0]),
                    "{f:?}"
                );
                assert!(!contains_allow_default(f), "{f:?}");
            }
            Self { forms, text }
        }
        fn read(&self, p: &str) -> bool {
            allowed(&self.forms, "file-read-data", Q::File(p))
        }
        fn stat(&self, p: &str) -> bool {
            allowed(&self.forms, "file-read-metadata", Q::File(p))
        }
        fn write(&self, p: &str) -> bool {
            let w = allowed(&self.forms, "file-write-data", Q::File(p));
            assert_eq!(w, allowed(&self.forms, "file-write-create", Q::File(p)));
            assert_eq!(w, allowed(&self.forms, "file-write-unlink", Q::File(p)));
            w
        }
        fn mach(&self, name: &str) -> bool {
            allowed(&self.forms, "mach-lookup", Q::Mach(name))
        }
        fn connect(&self, remote: &str) -> bool {
            allowed(&self.forms, "network-outbound", Q::Remote(remote))
        }
    }

    fn policy() -> SeatbeltPolicy {
        SeatbeltPolicy {
            workdir: "/Users/me/Library/Application Support/airlock/sandbox/sesn_1".into(),
            writable_roots: vec!["/Users/me/Library/Application Support/airlock/memory/m1".into()],
            read_only_paths: vec!["/Users/me/docs".into()],
            private_tmp: Some("/private/var/folders/ab/xyz/T/airlock-sandbox-tmp-1".into()),
            user_home: Some("/Users/me".into()),
            proxy_port: None,
        }
    }

    const WD: &str = "/Users/me/Library/Application Support/airlock/sandbox/sesn_1";

    #[test]
    fn denies_by_default_and_allows_writing_only_the_roots() {
        let p = Checked::new(&policy());
        assert!(p.write(&format!("{WD}/src/main.rs")));
        assert!(p.write(WD));
        assert!(p.write("/Users/me/Library/Application Support/airlock/memory/m1/notes.md"));
        assert!(p.write("/private/var/folders/ab/xyz/T/airlock-sandbox-tmp-1/x"));
        assert!(p.write("/dev/null"));
        for denied in [
            "/Users/me/Library/Application Support/airlock/sandbox/sesn_2/x",
            "/Users/me/Library/Application Support/airlock/control-token",
            "/Users/me/docs/notes.txt",
            "/Users/me/.zshrc",
            "/private/tmp/x",
            "/private/var/folders/ab/xyz/T/other",
            "/usr/local/bin/x",
            "/Library/LaunchDaemons/x.plist",
            "/private/etc/hosts",
        ] {
            assert!(!p.write(denied), "{denied} writable");
        }
        // A prefix that is not a path component is not inside the root.
        assert!(!p.write(&format!("{WD}-evil/x")));
        // Nothing is allowed that is not asked for.
        assert!(!allowed(&p.forms, "file-write-data", Q::File("/")));
        assert!(!allowed(&p.forms, "iokit-open", Q::File("/")));
    }

    #[test]
    fn denies_the_home_except_the_roots() {
        let p = Checked::new(&policy());
        for secret in [
            "/Users/me/.ssh/id_ed25519",
            "/Users/me/.aws/credentials",
            "/Users/me/.claude.json",
            "/Users/me/Library/Keychains/login.keychain-db",
            "/Users/me/Library/Application Support/Google/Chrome/Default/Cookies",
            "/Users/me/Library/Application Support/airlock/control-token",
            "/Users/me/Library/Application Support/airlock/sandbox/sesn_2/x",
            "/Users/other/x",
            "/Library/Keychains/System.keychain",
            "/private/etc/master.passwd",
            "/private/etc/sudoers",
            "/private/etc/ssh/ssh_host_ed25519_key",
            "/private/etc/ssl/private/key.pem",
            "/private/var/folders/ab/xyz/T/other-app/cache",
            "/Volumes/Backup/x",
            "/System/Volumes/Data/Users/me/.ssh/id_ed25519",
            "/private/etc/kcpassword",
        ] {
            assert!(!p.read(secret), "{secret} readable");
        }
        assert!(p.read(&format!("{WD}/README.md")));
        assert!(p.read("/Users/me/docs/ref.txt"));
        assert!(!p.write("/Users/me/docs/ref.txt"));
        for system in [
            "/bin/bash",
            "/usr/bin/env",
            "/usr/lib/libSystem.B.dylib",
            "/System/Library/Frameworks/x",
            "/opt/homebrew/bin/rg",
            "/private/etc/hosts",
            "/private/etc/ssl/cert.pem",
            "/private/var/db/timezone/zoneinfo/UTC",
            "/dev/urandom",
            "/",
        ] {
            assert!(p.read(system), "{system} unreadable");
        }
        // Ancestors of the roots: metadata only, no listing.
        assert!(p.stat("/Users/me"));
        assert!(p.stat("/Users"));
        assert!(!p.read("/Users/me"));
        assert!(!p.stat("/Users/me/.ssh"));
    }

    #[test]
    fn the_home_stays_hidden_below_a_system_location() {
        let mut pol = policy();
        pol.user_home = Some("/private/var/root".into());
        pol.workdir = "/private/var/root/airlock/sesn_1".into();
        pol.read_only_paths.clear();
        pol.writable_roots.clear();
        pol.private_tmp = None;
        let p = Checked::new(&pol);
        assert!(!p.read("/private/var/root/.ssh/id_rsa"));
        assert!(p.read("/private/var/root/airlock/sesn_1/x"));
        // A home under a readable system location is carved out of it.
        pol.user_home = Some("/Library/home".into());
        let p = Checked::new(&pol);
        assert!(!p.read("/Library/home/.ssh/id_rsa"));
        assert!(p.read("/Library/Fonts/x.ttf"));
    }

    #[test]
    fn every_steering_file_is_a_write_deny() {
        let p = Checked::new(&policy());
        let deny_regexes: Vec<String> = p
            .forms
            .iter()
            .filter_map(|f| match f {
                Sx::List(items)
                    if items.len() == 3
                        && items[0] == atom("deny")
                        && items[1] == atom("file-write*") =>
                {
                    match &items[2] {
                        Sx::List(r) if r[0] == atom("regex") => match &r[1] {
                            Sx::Regex(s) => Some(s.clone()),
                            _ => None,
                        },
                        _ => None,
                    }
                }
                _ => None,
            })
            .collect();
        let mut rels: Vec<String> = PROTECTED_NAMES
            .iter()
            .chain(PROTECTED_DIRS.iter())
            .map(|s| (*s).to_owned())
            .collect();
        rels.extend(PROTECTED_NESTED.iter().map(|(a, b)| format!("{a}/{b}")));
        assert!(rels.iter().any(|r| r == ".mcp.json"));
        assert!(rels.iter().any(|r| r == ".git/hooks"));
        for rel in &rels {
            for path in [
                format!("{WD}/{rel}"),
                format!("{WD}/sub/dir/{rel}"),
                format!("{WD}/{}", rel.to_uppercase()),
                format!("{WD}/{rel}/inner"),
                format!("/Users/me/Library/Application Support/airlock/memory/m1/{rel}"),
            ] {
                assert!(!p.write(&path), "{path} writable");
                assert!(
                    deny_regexes.iter().any(|r| compiled(r).is_match(&path)),
                    "no explicit deny for {path}"
                );
            }
            // Reading them is fine.
            assert!(p.read(&format!("{WD}/{rel}")));
        }
        // `.git` itself cannot be renamed away (and back) around its config.
        assert!(!p.write(&format!("{WD}/.git")));
        // Ordinary work in a repository still works.
        for ok in [
            ".git/HEAD",
            ".git/index",
            ".git/objects/ab/cdef",
            ".git/refs/heads/main",
            ".github/workflows/ci.yml",
            "config",
            "hooks/x",
            "x.mcp.json",
            ".mcp.json.bak",
            ".bashrc_notes",
        ] {
            assert!(p.write(&format!("{WD}/{ok}")), "{ok} refused");
        }
    }

    #[test]
    fn hostile_paths_stay_literals() {
        for evil in [
            "/tmp/w\")(allow default)(deny file-read* (literal \"x",
            "/tmp/w\\\")(allow default)",
            "/tmp/w)(allow default)(",
            "/tmp/w\\",
            "/tmp/w;(allow default)",
            "/tmp/w #\"(allow default)",
        ] {
            let mut pol = policy();
            pol.workdir = PathBuf::from(evil);
            pol.read_only_paths = vec![PathBuf::from(format!("{evil}-ro"))];
            let p = Checked::new(&pol);
            let canon = format!("/private{evil}");
            assert!(p.write(&format!("{canon}/f")), "{evil}:\n{}", p.text);
            assert!(p.read(&format!("{canon}-ro/f")));
            assert!(!p.write(&format!("{canon}-ro/f")));
            assert!(!p.write("/Users/me/x") && !p.read("/Users/me/.ssh/id_rsa"));
        }
        let mut pol = policy();
        pol.workdir = PathBuf::from("/tmp/a\nb");
        let err = profile(&pol).unwrap_err().to_string();
        assert!(err.contains("control character"), "{err}");
        pol.workdir = PathBuf::from("/");
        assert!(profile(&pol).is_err());
    }

    #[test]
    fn network_only_to_the_proxy_port() {
        let p = Checked::new(&policy());
        assert!(!p.text.contains("(allow network"), "{}", p.text);
        assert!(!p.connect("localhost:3128"));
        let mut pol = policy();
        pol.proxy_port = Some(41234);
        let p = Checked::new(&pol);
        assert!(p.connect("localhost:41234"));
        assert!(!p.connect("localhost:41235"));
        assert!(!p.connect("*:443"));
        assert!(!allowed(
            &p.forms,
            "network-inbound",
            Q::Remote("localhost:41234")
        ));
        assert!(!allowed(
            &p.forms,
            "network-bind",
            Q::Remote("localhost:41234")
        ));
        assert_eq!(p.text.matches("(allow network").count(), 1, "{}", p.text);
    }

    #[test]
    fn mach_lookups_are_minimal() {
        let p = Checked::new(&policy());
        assert!(p.mach("com.apple.system.opendirectoryd.libinfo"));
        for denied in [
            "com.apple.SecurityServer",
            "com.apple.securityd.xpc",
            "com.apple.secd",
            "com.apple.pasteboard.1",
            "com.apple.coreservices.launchservicesd",
            "com.apple.windowserver.active",
        ] {
            assert!(!p.mach(denied), "{denied}");
        }
        assert!(p.text.contains("(deny mach-lookup"));
    }

    #[test]
    fn canonicalizes_the_macos_root_links() {
        assert_eq!(
            canonical(Path::new("/var/folders/zz/none-such-9f3/T")),
            PathBuf::from("/private/var/folders/zz/none-such-9f3/T")
        );
        assert_eq!(
            canonical(Path::new("/tmp/none-such-9f3/../b")),
            PathBuf::from("/private/tmp/b")
        );
        assert_eq!(
            canonical(Path::new("/etc/none-such-9f3")),
            PathBuf::from("/private/etc/none-such-9f3")
        );
        assert_eq!(
            canonical(Path::new("/variable/none-such-9f3")),
            PathBuf::from("/variable/none-such-9f3")
        );
        // Existing paths are resolved (symlinks followed).
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        std::os::unix::fs::symlink(&real, real.join("link")).unwrap();
        assert_eq!(canonical(&real.join("link")), real);
        let mut pol = policy();
        pol.workdir = "/var/folders/zz/none-such-9f3/w".into();
        let p = Checked::new(&pol);
        assert!(p.write("/private/var/folders/zz/none-such-9f3/w/x"));
    }

    #[tokio::test]
    async fn the_loopback_forward_reaches_the_socket() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("p.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    let n = s.read(&mut buf).await.unwrap();
                    s.write_all(b"echo:").await.unwrap();
                    s.write_all(&buf[..n]).await.unwrap();
                });
            }
        });
        let fwd = LoopbackForward::start(sock).await.unwrap();
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", fwd.port()))
            .await
            .unwrap();
        tcp.write_all(b"hello").await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(20),
            tcp.read_to_end(&mut got),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(got, b"echo:hello");
        let port = fwd.port();
        drop(fwd);
        // Stopped: the listener goes away.
        let mut refused = false;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                refused = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(refused);
    }
}
