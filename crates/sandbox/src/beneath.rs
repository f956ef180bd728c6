//! Race-free opens for the file tools: every open, mkdir and rename happens relative to a
//! descriptor of the root with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so a symlink
//! swapped in by a process inside the sandbox between the path check and the open cannot lead
//! outside (the open fails instead).

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

fn to_io(e: Errno) -> io::Error {
    match e {
        // A symlink (or `..`) appeared on the way: report it as such.
        Errno::ELOOP | Errno::EXDEV => io::Error::other(
            "a symbolic link appeared in the path while it was being opened; refused",
        ),
        other => io::Error::from(other),
    }
}

fn how(flags: OFlag, mode: u32) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .mode(Mode::from_bits_truncate(mode))
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        )
}

fn root_fd(root: &Path) -> io::Result<OwnedFd> {
    nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
}

fn relative<'a>(root: &Path, path: &'a Path) -> io::Result<&'a Path> {
    path.strip_prefix(root)
        .map_err(|_| io::Error::other("path is outside its root"))
}

fn rel_or_dot(rel: &Path) -> &Path {
    if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    }
}

/// Open `path` (which lies under `root`) for reading. Non-blocking, so a FIFO swapped in
/// cannot hang the call.
pub(crate) fn open_read(root: &Path, path: &Path) -> io::Result<File> {
    let dir = root_fd(root)?;
    let rel = relative(root, path)?;
    let fd = nix::fcntl::openat2(
        &dir,
        rel_or_dot(rel),
        how(OFlag::O_RDONLY | OFlag::O_NONBLOCK, 0),
    )
    .map_err(to_io)?;
    Ok(File::from(fd))
}

/// `mkdir -p` of `dir` below `root`, one component at a time; returns a descriptor of `dir`.
pub(crate) fn mkdir_p(root: &Path, dir: &Path) -> io::Result<OwnedFd> {
    let rel = relative(root, dir)?;
    let mut cur = root_fd(root)?;
    for c in rel.components() {
        let Component::Normal(name) = c else {
            return Err(io::Error::other("unexpected path component"));
        };
        match nix::sys::stat::mkdirat(&cur, name, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(io::Error::from(e)),
        }
        cur = nix::fcntl::openat2(&cur, name, how(OFlag::O_PATH | OFlag::O_DIRECTORY, 0))
            .map_err(to_io)?;
    }
    Ok(cur)
}

/// Replace `path` (below `root`) with `content` atomically: a temporary file created next to
/// it, then renamed over it, both relative to the parent's descriptor.
pub(crate) fn write_atomic(root: &Path, path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    let parent = path
        .parent()
        .ok_or_else(|| io::Error::from(io::ErrorKind::IsADirectory))?;
    let name: &OsStr = path
        .file_name()
        .ok_or_else(|| io::Error::from(io::ErrorKind::IsADirectory))?;
    let dir = mkdir_p(root, parent)?;
    let tmp = format!(
        ".{}.airlock-{:016x}.tmp",
        name.to_string_lossy(),
        rand::random::<u64>()
    );
    let fd = nix::fcntl::openat2(
        &dir,
        tmp.as_str(),
        how(OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL, mode),
    )
    .map_err(to_io)?;
    let mut file = File::from(fd);
    let written = (|| {
        file.write_all(content)?;
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.sync_all()
    })();
    let result = written.and_then(|()| {
        nix::fcntl::renameat(&dir, tmp.as_str(), &dir, name).map_err(io::Error::from)
    });
    if result.is_err() {
        let _ = nix::unistd::unlinkat(&dir, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
    }
    result
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn symlinks_on_the_way_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let outside = outside.path().canonicalize().unwrap();
        std::fs::write(outside.join("secret"), "s").unwrap();
        // As if a process swapped `sub` for a symlink after the path was checked.
        std::os::unix::fs::symlink(&outside, root.join("sub")).unwrap();
        let err = open_read(&root, &root.join("sub/secret")).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        // (A symlinked directory is refused as "not a directory": O_NOFOLLOW opens the link.)
        assert!(write_atomic(&root, &root.join("sub/planted"), b"x", 0o644).is_err());
        assert!(!outside.join("planted").exists());
        std::os::unix::fs::symlink(outside.join("secret"), root.join("leaf")).unwrap();
        assert!(open_read(&root, &root.join("leaf")).is_err());
        // Without links everything works.
        write_atomic(&root, &root.join("a/b/c.txt"), b"hello", 0o600).unwrap();
        let mut s = String::new();
        std::io::Read::read_to_string(
            &mut open_read(&root, &root.join("a/b/c.txt")).unwrap(),
            &mut s,
        )
        .unwrap();
        assert_eq!(s, "hello");
    }
}
