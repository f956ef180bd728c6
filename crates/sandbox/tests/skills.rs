#![allow(clippy::unwrap_used)]
//! Skill archives: zip-slip / tar-slip refused, links and devices skipped.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use airlock_sandbox::unpack_skill;
use common::*;

/// A tar member with a raw name (the tar crate's own builder refuses `..`, which is the point).
fn raw_tar(members: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, data, link) in members {
        let mut h = tar::Header::new_gnu();
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(if name.ends_with(".sh") { 0o700 } else { 0o600 });
        if !link.is_empty() {
            h.set_link_name(link).unwrap();
        }
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn zip(members: &[(&str, &[u8])], symlink: Option<(&str, &str)>) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    for (name, data) in members {
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    if let Some((name, target)) = symlink {
        w.add_symlink(name, target, opts).unwrap();
    }
    w.finish().unwrap().into_inner()
}

#[test]
fn tar_slip_and_absolute_paths_are_refused() {
    let env = env();
    let skills = env.workdir.join("skills");
    for bad in ["../evil.txt", "pdf/../../evil.txt", "/tmp/evil.txt"] {
        let archive = raw_tar(&[
            ("pdf/SKILL.md", tar::EntryType::Regular, b"ok", ""),
            (bad, tar::EntryType::Regular, b"evil", ""),
        ]);
        let err = unpack_skill(&archive, &skills, "pdf")
            .unwrap_err()
            .to_string();
        assert!(err.contains("skill archive refused"), "{bad}: {err}");
        assert!(!env.workdir.join("evil.txt").exists());
        assert!(
            !skills.join("pdf").exists(),
            "nothing is written from a refused archive"
        );
    }
    assert!(
        !std::path::Path::new("/tmp/evil.txt").exists()
            || std::fs::read("/tmp/evil.txt").unwrap() != b"evil"
    );
}

#[test]
fn zip_slip_is_refused() {
    let env = env();
    let skills = env.workdir.join("skills");
    let archive = zip(&[("SKILL.md", b"ok"), ("../../escaped.txt", b"evil")], None);
    let err = unpack_skill(&archive, &skills, "x")
        .unwrap_err()
        .to_string();
    assert!(err.contains("'..'"), "{err}");
    assert!(!env.workdir.parent().unwrap().join("escaped.txt").exists());
}

#[test]
fn links_and_devices_are_skipped_and_the_rest_unpacked() {
    let env = env();
    let skills = env.workdir.join("skills");
    let archive = raw_tar(&[
        ("my-skill/", tar::EntryType::Directory, b"", ""),
        ("my-skill/SKILL.md", tar::EntryType::Regular, b"# skill", ""),
        (
            "my-skill/run.sh",
            tar::EntryType::Regular,
            b"#!/bin/sh\necho hi\n",
            "",
        ),
        (
            "my-skill/key",
            tar::EntryType::Symlink,
            b"",
            "/root/.ssh/id_ed25519",
        ),
        ("my-skill/hard", tar::EntryType::Link, b"", "/etc/passwd"),
        ("my-skill/dev", tar::EntryType::Char, b"", ""),
        ("my-skill/fifo", tar::EntryType::Fifo, b"", ""),
    ]);
    // The archive name may not be a path either.
    let report = unpack_skill(&archive, &skills, "../../outside/pdf").unwrap();
    let dir = skills.join("pdf");
    assert_eq!(report.dir, dir);
    assert_eq!(report.files, 2);
    assert_eq!(report.skipped.len(), 4, "{report:?}");
    // The shared top-level directory is stripped; modes collapse to 0755/0644; the skill dir is 0700.
    assert_eq!(std::fs::read(dir.join("SKILL.md")).unwrap(), b"# skill");
    let mode = |p: &str| std::fs::metadata(dir.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("SKILL.md"), 0o644);
    assert_eq!(mode("run.sh"), 0o755);
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for skipped in ["key", "hard", "dev", "fifo"] {
        assert!(
            std::fs::symlink_metadata(dir.join(skipped)).is_err(),
            "{skipped}"
        );
    }
    // zip symlinks too; gzip'd tars work.
    let archive = zip(&[("SKILL.md", b"zip skill")], Some(("link", "/etc/passwd")));
    let report = unpack_skill(&archive, &skills, "z").unwrap();
    assert_eq!(report.files, 1);
    assert_eq!(report.skipped.len(), 1);
    assert!(std::fs::symlink_metadata(skills.join("z/link")).is_err());
    let tar = raw_tar(&[("SKILL.md", tar::EntryType::Regular, b"gz skill", "")]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    let report = unpack_skill(&gz.finish().unwrap(), &skills, "g").unwrap();
    assert_eq!(
        std::fs::read(report.dir.join("SKILL.md")).unwrap(),
        b"gz skill"
    );
    // A pre-existing symlink at the destination is replaced, never followed.
    let victim = env.home.join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::os::unix::fs::symlink(&victim, skills.join("s")).unwrap();
    unpack_skill(&tar, &skills, "s").unwrap();
    assert!(std::fs::read_dir(&victim).unwrap().next().is_none());
    assert!(skills.join("s/SKILL.md").is_file());
    assert!(unpack_skill(b"not an archive", &skills, "bad").is_err());
}

#[tokio::test]
async fn installed_skills_are_visible_in_the_sandbox() {
    let env = env();
    let sb = open(&env).await;
    let archive = zip(&[("tool/SKILL.md", b"skill text")], None);
    sb.install_skill("tool", archive).await.unwrap();
    let out = bash(&sb, "cat skills/tool/SKILL.md").await;
    assert_eq!(out.text_content(), "skill text");
    sb.close().await;
}
