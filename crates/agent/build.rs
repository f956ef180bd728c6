//! Rebuild when the embedded web UI changes (rust-embed includes `ui/` at compile time).
fn main() {
    println!("cargo:rerun-if-changed=../../ui");
}
