//! Unpacking skill archives into `<workdir>/skills/<name>/`.
//!
//! zip, tar and tar.gz. Absolute paths and `..` components refuse the whole archive
//! (zip-slip/tar-slip); symlinks, hard links and device/fifo members are skipped; a single
//! top-level directory shared by every member is stripped; modes collapse to 0755 (any exec
//! bit) or 0644; the skill directory is created 0700. Nothing is written before the whole
//! archive has been checked.

use std::fs;
use std::io::{Cursor, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::SandboxError;

/// Total uncompressed size accepted.
pub const MAX_SKILL_BYTES: u64 = 256 * 1024 * 1024;
/// Members accepted.
pub const MAX_SKILL_ENTRIES: usize = 20_000;

/// What an unpack did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SkillReport {
    /// `<skills_dir>/<name>`.
    pub dir: PathBuf,
    /// Regular files written.
    pub files: usize,
    /// Members skipped (links, devices), with the reason.
    pub skipped: Vec<String>,
}

enum Kind {
    File { data: Vec<u8>, exec: bool },
    Dir,
}

struct Member {
    parts: Vec<String>,
    kind: Kind,
}

fn refuse(msg: impl Into<String>) -> SandboxError {
    SandboxError::Skill(msg.into())
}

/// Split a member name into safe components, refusing absolute paths and `..`.
fn components(raw: &str) -> Result<Vec<String>, SandboxError> {
    if raw.starts_with('/') || raw.starts_with('\\') {
        return Err(refuse(format!("member {raw:?} has an absolute path")));
    }
    if raw.len() >= 2 && raw.as_bytes()[1] == b':' {
        return Err(refuse(format!("member {raw:?} has a drive-letter path")));
    }
    if raw.contains('\0') {
        return Err(refuse(format!("member {raw:?} contains NUL")));
    }
    let mut parts = Vec::new();
    for p in raw.split(['/', '\\']) {
        match p {
            "" | "." => {}
            ".." => {
                return Err(refuse(format!(
                    "member {raw:?} has a '..' component (path traversal)"
                )));
            }
            other => parts.push(other.to_owned()),
        }
    }
    Ok(parts)
}

fn read_capped(r: &mut dyn Read, budget: &mut u64, name: &str) -> Result<Vec<u8>, SandboxError> {
    let mut data = Vec::new();
    r.take(*budget + 1)
        .read_to_end(&mut data)
        .map_err(|e| refuse(format!("reading {name:?}: {e}")))?;
    if data.len() as u64 > *budget {
        return Err(refuse(format!(
            "archive expands beyond {MAX_SKILL_BYTES} bytes"
        )));
    }
    *budget -= data.len() as u64;
    Ok(data)
}

fn read_zip(bytes: &[u8], skipped: &mut Vec<String>) -> Result<Vec<Member>, SandboxError> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| refuse(format!("not a valid zip archive: {e}")))?;
    if zip.len() > MAX_SKILL_ENTRIES {
        return Err(refuse(format!("more than {MAX_SKILL_ENTRIES} members")));
    }
    let mut budget = MAX_SKILL_BYTES;
    let mut members = Vec::new();
    for i in 0..zip.len() {
        let mut f = zip
            .by_index(i)
            .map_err(|e| refuse(format!("zip member {i}: {e}")))?;
        let raw = String::from_utf8_lossy(f.name_raw()).into_owned();
        let parts = components(&raw)?;
        let mode = f.unix_mode();
        let file_type = mode.map(|m| m & 0o170_000);
        if f.is_dir() || file_type == Some(0o040_000) {
            members.push(Member {
                parts,
                kind: Kind::Dir,
            });
            continue;
        }
        if matches!(file_type, Some(t) if t != 0o100_000 && t != 0) {
            skipped.push(format!("{raw} (not a regular file)"));
            continue;
        }
        let data = read_capped(&mut f, &mut budget, &raw)?;
        let exec = mode.is_some_and(|m| m & 0o111 != 0);
        members.push(Member {
            parts,
            kind: Kind::File { data, exec },
        });
    }
    Ok(members)
}

fn read_tar(reader: &mut dyn Read, skipped: &mut Vec<String>) -> Result<Vec<Member>, SandboxError> {
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| refuse(format!("not a valid tar archive: {e}")))?;
    let mut budget = MAX_SKILL_BYTES;
    let mut members = Vec::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| refuse(format!("tar member: {e}")))?;
        if members.len() + skipped.len() >= MAX_SKILL_ENTRIES {
            return Err(refuse(format!("more than {MAX_SKILL_ENTRIES} members")));
        }
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink()
        {
            continue;
        }
        let parts = components(&raw)?;
        if kind.is_dir() {
            members.push(Member {
                parts,
                kind: Kind::Dir,
            });
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            let exec = entry.header().mode().is_ok_and(|m| m & 0o111 != 0);
            let data = read_capped(&mut entry, &mut budget, &raw)?;
            members.push(Member {
                parts,
                kind: Kind::File { data, exec },
            });
        } else {
            skipped.push(format!("{raw} (not a regular file)"));
        }
    }
    Ok(members)
}

fn valid_name(name: &str) -> Result<String, SandboxError> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    if base.is_empty() || base == "." || base == ".." || base.contains('\0') {
        return Err(refuse(format!("invalid skill name {name:?}")));
    }
    Ok(base.to_owned())
}

/// Unpack `archive` into `<skills_dir>/<name>/` (replacing what was there).
pub fn unpack_skill(
    archive: &[u8],
    skills_dir: &Path,
    name: &str,
) -> Result<SkillReport, SandboxError> {
    let name = valid_name(name)?;
    let mut skipped = Vec::new();
    let mut members = if archive.starts_with(b"PK\x03\x04") || archive.starts_with(b"PK\x05\x06") {
        read_zip(archive, &mut skipped)?
    } else if archive.starts_with(&[0x1f, 0x8b]) {
        let mut gz = flate2::read::GzDecoder::new(archive);
        read_tar(&mut gz, &mut skipped)?
    } else if archive.len() > 262 && &archive[257..262] == b"ustar" {
        let mut r = archive;
        read_tar(&mut r, &mut skipped)?
    } else {
        return Err(refuse(
            "unsupported archive format (expected zip, tar or tar.gz)",
        ));
    };
    members.retain(|m| !m.parts.is_empty());
    // Strip one top-level directory shared by every member.
    if let Some(first) = members.first().map(|m| m.parts[0].clone()) {
        let shared = members
            .iter()
            .all(|m| m.parts[0] == first && (m.parts.len() > 1 || matches!(m.kind, Kind::Dir)));
        if shared && members.iter().any(|m| m.parts.len() > 1) {
            for m in &mut members {
                m.parts.remove(0);
            }
            members.retain(|m| !m.parts.is_empty());
        }
    }

    fs::create_dir_all(skills_dir)
        .map_err(|e| SandboxError::io(format!("creating {}", skills_dir.display()), e))?;
    let dest = skills_dir.join(&name);
    if let Ok(meta) = fs::symlink_metadata(&dest) {
        let r = if meta.is_dir() {
            fs::remove_dir_all(&dest)
        } else {
            fs::remove_file(&dest)
        };
        r.map_err(|e| SandboxError::io(format!("replacing {}", dest.display()), e))?;
    }
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dest)
        .map_err(|e| SandboxError::io(format!("creating {}", dest.display()), e))?;
    let write = || -> Result<usize, SandboxError> {
        let mut files = 0;
        for m in &members {
            let path = m.parts.iter().fold(dest.clone(), |p, c| p.join(c));
            match &m.kind {
                Kind::Dir => {
                    fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o755)
                        .create(&path)
                        .map_err(|e| SandboxError::io(format!("creating {}", path.display()), e))?;
                }
                Kind::File { data, exec } => {
                    if let Some(parent) = path.parent() {
                        fs::DirBuilder::new()
                            .recursive(true)
                            .mode(0o755)
                            .create(parent)
                            .map_err(|e| {
                                SandboxError::io(format!("creating {}", parent.display()), e)
                            })?;
                    }
                    // Later duplicates of a name replace earlier ones (as tar does).
                    if fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
                        let _ = fs::remove_file(&path);
                    }
                    let mut f = fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(if *exec { 0o755 } else { 0o644 })
                        .open(&path)
                        .map_err(|e| SandboxError::io(format!("writing {}", path.display()), e))?;
                    f.write_all(data)
                        .map_err(|e| SandboxError::io(format!("writing {}", path.display()), e))?;
                    files += 1;
                }
            }
        }
        Ok(files)
    };
    match write() {
        Ok(files) => Ok(SkillReport {
            dir: dest,
            files,
            skipped,
        }),
        Err(e) => {
            let _ = fs::remove_dir_all(&dest);
            Err(e)
        }
    }
}
