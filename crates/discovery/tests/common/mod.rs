//! Shared test helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Placeholder in the fixture's `.claude.json` replaced by the absolute fixture home.
pub const HOME_PLACEHOLDER: &str = "@HOME@";

pub fn fixture_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join("home")
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Copy the twelve-client fixture into `dest` and substitute `@HOME@` in `.claude.json`.
pub fn install_fixture(dest: &Path) -> std::io::Result<()> {
    copy_dir(&fixture_src(), dest)?;
    let cj = dest.join(".claude.json");
    let text = std::fs::read_to_string(&cj)?;
    std::fs::write(
        &cj,
        text.replace(HOME_PLACEHOLDER, &dest.display().to_string()),
    )
}
