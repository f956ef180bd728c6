//! The file tools (`read`, `write`, `edit`, `glob`, `grep`), with the reference's limits and
//! error texts. They run in the agent process (blocking pool) on paths confined by
//! [`crate::paths`].

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::Value;

use crate::beneath;
use crate::paths::{self, Access, Placed};
use crate::{Base64Source, ContentBlock, Inner, ToolOutput};

/// Images are returned when their base64 form is at most this long.
pub(crate) const MAX_IMAGE_BASE64: u64 = 5 * 1024 * 1024;
/// PDFs are returned up to this raw size.
pub(crate) const MAX_PDF_BYTES: u64 = 20 * 1024 * 1024;
/// `glob` result cap.
pub(crate) const GLOB_MAX_RESULTS: usize = 200;
/// Walk cap for `glob` and `grep`.
pub(crate) const WALK_CAP: usize = 50_000;
/// `grep` output cap.
pub(crate) const GREP_OUTPUT_CAP: usize = 100 * 1024;
/// `grep` skips longer lines.
pub(crate) const GREP_MAX_LINE: usize = 2000;
/// Directory depth cap of the walks.
const WALK_DEPTH: usize = 40;

pub(crate) fn run(inner: &Inner, name: &str, input: &Value) -> ToolOutput {
    let result = match name {
        "read" => read(inner, input),
        "write" => write(inner, input),
        "edit" => edit(inner, input),
        "glob" => glob(inner, input),
        "grep" => grep(inner, input),
        other => Err(format!("unknown tool '{other}'")),
    };
    result.unwrap_or_else(ToolOutput::error)
}

fn str_field<'a>(op: &str, input: &'a Value, key: &str) -> Result<&'a str, String> {
    match input.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(Value::Null) | None => Err(format!("{op}: {key} is required")),
        Some(_) => Err(format!("{op}: {key} must be a string")),
    }
}

fn opt_str_field<'a>(op: &str, input: &'a Value, key: &str) -> Result<Option<&'a str>, String> {
    match input.get(key) {
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Null) | None => Ok(None),
        Some(_) => Err(format!("{op}: {key} must be a string")),
    }
}

fn fs_error(op: &str, path: &str, e: &io::Error) -> String {
    let what = match e.kind() {
        io::ErrorKind::NotFound => "no such file or directory".to_owned(),
        io::ErrorKind::NotADirectory => "not a directory".to_owned(),
        io::ErrorKind::IsADirectory => "is a directory".to_owned(),
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            "permission denied".to_owned()
        }
        io::ErrorKind::AlreadyExists => "file already exists".to_owned(),
        _ => e.to_string(),
    };
    format!("{op}: {path}: {what}")
}

fn place(inner: &Inner, op: &str, input: &str, access: Access) -> Result<Placed, String> {
    if input.is_empty() {
        return Err(format!("{op}: file_path is required"));
    }
    if input.contains('\0') {
        return Err(format!("{op}: path contains a NUL byte"));
    }
    let placed = inner.roots.place(input)?;
    if access == Access::Write {
        paths::check_write(op, input, &placed)?;
    }
    Ok(placed)
}

fn media_type(path: &Path) -> Option<(&'static str, bool)> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "png" => ("image/png", true),
        "jpg" | "jpeg" => ("image/jpeg", true),
        "gif" => ("image/gif", true),
        "webp" => ("image/webp", true),
        "pdf" => ("application/pdf", false),
        _ => return None,
    })
}

/// Open a regular file for reading without following a symlink swapped in after resolution.
fn open_regular(op: &str, shown: &str, placed: &Placed) -> Result<(fs::File, u64), String> {
    let meta = fs::symlink_metadata(&placed.path).map_err(|e| fs_error(op, shown, &e))?;
    if !meta.file_type().is_file() {
        return Err(format!("{op}: {shown}: not a regular file"));
    }
    let file =
        beneath::open_read(&placed.root, &placed.path).map_err(|e| fs_error(op, shown, &e))?;
    let meta = file.metadata().map_err(|e| fs_error(op, shown, &e))?;
    if !meta.is_file() {
        return Err(format!("{op}: {shown}: not a regular file"));
    }
    Ok((file, meta.len()))
}

fn read_capped(op: &str, shown: &str, file: fs::File, cap: u64) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    file.take(cap + 1)
        .read_to_end(&mut buf)
        .map_err(|e| fs_error(op, shown, &e))?;
    if buf.len() as u64 > cap {
        return Err(format!(
            "{op}: {shown} grew past the {cap}-byte limit while reading"
        ));
    }
    Ok(buf)
}

fn read(inner: &Inner, input: &Value) -> Result<ToolOutput, String> {
    let file_path = str_field("read", input, "file_path")?;
    let placed = place(inner, "read", file_path, Access::Read)?;
    let view_range = match input.get("view_range") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) if a.len() == 2 => match (a[0].as_i64(), a[1].as_i64()) {
            (Some(s), Some(e)) if s >= 1 => Some((s, e)),
            _ => return Err("read: view_range must be [start_line, end_line]".into()),
        },
        Some(_) => return Err("read: view_range must be [start_line, end_line]".into()),
    };
    let (file, len) = open_regular("read", file_path, &placed)?;
    if let Some((media_type, is_image)) = media_type(&placed.path) {
        if view_range.is_some() {
            return Err(format!(
                "read: view_range is not supported for {} files",
                if is_image { "image" } else { "PDF" }
            ));
        }
        let cap = if is_image {
            // base64 grows by 4/3.
            let encoded = len.div_ceil(3) * 4;
            if encoded > MAX_IMAGE_BASE64 {
                return Err(format!(
                    "read: {file_path} is {len} bytes ({encoded} bytes as base64), exceeds {MAX_IMAGE_BASE64}-byte image limit"
                ));
            }
            MAX_IMAGE_BASE64
        } else {
            if len > MAX_PDF_BYTES {
                return Err(format!(
                    "read: {file_path} is {len} bytes, exceeds {MAX_PDF_BYTES}-byte PDF limit"
                ));
            }
            MAX_PDF_BYTES
        };
        let bytes = read_capped("read", file_path, file, cap)?;
        let source = Base64Source {
            kind: "base64".into(),
            media_type: media_type.into(),
            data: base64::engine::general_purpose::STANDARD.encode(&bytes),
        };
        let block = if is_image {
            ContentBlock::Image { source }
        } else {
            ContentBlock::Document { source }
        };
        return Ok(ToolOutput {
            content: vec![block],
            is_error: false,
        });
    }
    let limit = inner.limits.max_file_bytes;
    if len > limit {
        return Err(format!(
            "read: {file_path} is {len} bytes, exceeds {limit}-byte limit. Use bash (head/tail/sed) to read a slice."
        ));
    }
    let bytes = read_capped("read", file_path, file, limit)?;
    let text = String::from_utf8(bytes).map_err(|_| {
        format!(
            "read: {file_path}: not valid UTF-8 text (binary files are only supported for image/PDF extensions)"
        )
    })?;
    let Some((start, end)) = view_range else {
        return Ok(ToolOutput::text(text));
    };
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let start_idx = usize::try_from(start - 1).unwrap_or(usize::MAX);
    let end_idx = if end <= 0 {
        lines.len()
    } else {
        usize::try_from(end).unwrap_or(usize::MAX).min(lines.len())
    };
    if start_idx >= lines.len() && !lines.is_empty() {
        return Err(format!(
            "read: view_range start {start} is past the end of {file_path} ({} lines)",
            lines.len()
        ));
    }
    if end > 0 && end < start {
        return Err("read: view_range must be [start_line, end_line]".into());
    }
    // The selected lines joined by newlines, without a newline after the last (the reference's
    // split-and-join).
    let slice = lines.get(start_idx..end_idx).unwrap_or(&[]).concat();
    let slice = slice.strip_suffix('\n').unwrap_or(&slice);
    Ok(ToolOutput::text(slice))
}

/// Write `content` to the placed path atomically (temp file in the same directory, then
/// rename), every step relative to the root's descriptor.
fn atomic_write(op: &str, shown: &str, placed: &Placed, content: &[u8]) -> Result<(), String> {
    if let Ok(meta) = fs::symlink_metadata(&placed.path)
        && meta.is_dir()
    {
        return Err(format!("{op}: {shown}: is a directory"));
    }
    if placed.path == placed.root {
        return Err(format!("{op}: {shown}: is a directory"));
    }
    let mode = fs::symlink_metadata(&placed.path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0o644);
    beneath::write_atomic(&placed.root, &placed.path, content, mode)
        .map_err(|e| fs_error(op, shown, &e))
}

fn write(inner: &Inner, input: &Value) -> Result<ToolOutput, String> {
    let file_path = str_field("write", input, "file_path")?;
    let content = str_field("write", input, "content")?;
    let placed = place(inner, "write", file_path, Access::Write)?;
    atomic_write("write", file_path, &placed, content.as_bytes())?;
    Ok(ToolOutput::text(format!(
        "wrote {} bytes to {file_path}",
        content.len()
    )))
}

fn edit(inner: &Inner, input: &Value) -> Result<ToolOutput, String> {
    let file_path = str_field("edit", input, "file_path")?;
    let old = str_field("edit", input, "old_string")?;
    let new = str_field("edit", input, "new_string")?;
    let replace_all = match input.get("replace_all") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("edit: replace_all must be a boolean".into()),
    };
    if old.is_empty() {
        return Err("edit: old_string must not be empty".into());
    }
    let placed = place(inner, "edit", file_path, Access::Write)?;
    let (file, len) = open_regular("edit", file_path, &placed)?;
    let limit = inner.limits.max_file_bytes;
    if len > limit {
        return Err(format!(
            "edit: {file_path} is {len} bytes, exceeds {limit}-byte limit. Use bash (sed/awk) to edit a large file."
        ));
    }
    let bytes = read_capped("edit", file_path, file, limit)?;
    let text =
        String::from_utf8(bytes).map_err(|_| format!("edit: {file_path}: not valid UTF-8 text"))?;
    let count = text.matches(old).count();
    if count == 0 {
        return Err(format!("edit: old_string not found in {file_path}"));
    }
    if count > 1 && !replace_all {
        return Err(format!(
            "edit: old_string appears {count} times in {file_path} (must be unique)"
        ));
    }
    let updated = if replace_all {
        text.replace(old, new)
    } else {
        text.replacen(old, new, 1)
    };
    atomic_write("edit", file_path, &placed, updated.as_bytes())?;
    let n = if replace_all { count } else { 1 };
    Ok(ToolOutput::text(format!(
        "edited {file_path} ({n} replacement(s))"
    )))
}

/// Walk `root` without following symlinked directories, skipping `.git` and `node_modules`.
/// Calls `visit` for each non-directory entry; stops after [`WALK_CAP`] entries.
fn walk(root: &Path, mut visit: impl FnMut(&Path, &fs::FileType) -> bool) {
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    let mut seen = 0usize;
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            seen += 1;
            if seen > WALK_CAP {
                return;
            }
            let Ok(ft) = entry.file_type() else { continue };
            let path = entry.path();
            if ft.is_dir() {
                let name = entry.file_name();
                if name == ".git" || name == "node_modules" || depth + 1 > WALK_DEPTH {
                    continue;
                }
                stack.push((path, depth + 1));
            } else if !visit(&path, &ft) {
                return;
            }
        }
    }
}

fn search_root(inner: &Inner, op: &str, path: Option<&str>) -> Result<(PathBuf, PathBuf), String> {
    match path {
        None | Some("") => Ok((inner.workdir.clone(), inner.workdir.clone())),
        Some(p) => {
            let placed = inner.roots.place(p)?;
            let meta = fs::metadata(&placed.path).map_err(|e| fs_error(op, p, &e))?;
            if !meta.is_dir() && op == "glob" {
                return Err(format!("{op}: {p}: not a directory"));
            }
            Ok((placed.path, placed.root))
        }
    }
}

fn glob(inner: &Inner, input: &Value) -> Result<ToolOutput, String> {
    let pattern = str_field("glob", input, "pattern")?;
    if pattern.starts_with('/') {
        return Err("glob: absolute pattern not permitted".into());
    }
    if pattern.split('/').any(|seg| seg == "..") {
        return Err("glob: '..' is not permitted in the pattern".into());
    }
    let path = opt_str_field("glob", input, "path")?;
    let (root, _) = search_root(inner, "glob", path)?;
    let matcher = globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| format!("glob: invalid pattern: {e}"))?
        .compile_matcher();
    let mut hits: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    walk(&root, |p, ft| {
        let Ok(rel) = p.strip_prefix(&root) else {
            return true;
        };
        if !matcher.is_match(rel) {
            return true;
        }
        // Symlinks: re-resolved, kept only when they land on a regular file inside a root.
        let target = if ft.is_symlink() {
            match inner.roots.place(&p.to_string_lossy()) {
                Ok(placed) => placed.path,
                Err(_) => return true,
            }
        } else {
            p.to_path_buf()
        };
        if let Ok(meta) = fs::metadata(&target)
            && meta.is_file()
        {
            let mtime = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
            hits.push((mtime, p.to_path_buf()));
        }
        true
    });
    if hits.is_empty() {
        return Ok(ToolOutput::text("no matches"));
    }
    hits.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    hits.truncate(GLOB_MAX_RESULTS);
    let out: Vec<String> = hits.iter().map(|(_, p)| p.display().to_string()).collect();
    Ok(ToolOutput::text(out.join("\n")))
}

fn grep(inner: &Inner, input: &Value) -> Result<ToolOutput, String> {
    let pattern = str_field("grep", input, "pattern")?;
    let path = opt_str_field("grep", input, "path")?;
    let re = regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .dfa_size_limit(1 << 22)
        .build()
        .map_err(|e| format!("grep: invalid pattern: {e}"))?;
    let (root, base) = search_root(inner, "grep", path)?;
    let mut out = String::new();
    let mut truncated = false;
    let mut scan = |file: &Path| -> bool {
        let Ok(f) = beneath::open_read(&base, file) else {
            return true;
        };
        let mut bytes = Vec::new();
        // Files above 16 MiB are not searched in full (a bound on one call's memory).
        if f.take(16 << 20).read_to_end(&mut bytes).is_err() {
            return true;
        }
        if bytes.iter().take(512).any(|&b| b == 0) {
            return true;
        }
        let text = String::from_utf8_lossy(&bytes);
        for (i, line) in text.lines().enumerate() {
            if line.len() > GREP_MAX_LINE || !re.is_match(line) {
                continue;
            }
            let entry = format!("{}:{}:{}\n", file.display(), i + 1, line);
            if out.len() + entry.len() > GREP_OUTPUT_CAP {
                truncated = true;
                return false;
            }
            out.push_str(&entry);
        }
        true
    };
    let meta =
        fs::symlink_metadata(&root).map_err(|e| fs_error("grep", path.unwrap_or("."), &e))?;
    if meta.is_file() {
        scan(&root);
    } else {
        walk(&root, |p, ft| if ft.is_file() { scan(p) } else { true });
    }
    if out.is_empty() {
        return Ok(ToolOutput::text("no matches"));
    }
    if truncated {
        out.push_str(&format!("[output truncated at {GREP_OUTPUT_CAP} bytes]"));
    } else if out.ends_with('\n') {
        out.pop();
    }
    Ok(ToolOutput::text(out))
}
