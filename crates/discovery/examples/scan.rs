//! Print what discovery finds on this machine (redacted), as JSON.
//!
//! `cargo run -p airlock-discovery --example scan [-- --probe]`

use airlock_discovery::{DiscoveryEnv, ProbeOptions, probe_running, scan};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut snap = scan(&DiscoveryEnv::from_process());
    if std::env::args().any(|a| a == "--probe") {
        snap.servers
            .extend(probe_running(&ProbeOptions::default()).await);
    }
    for s in &mut snap.servers {
        s.transport = s.transport.redacted();
    }
    println!("{}", serde_json::to_string_pretty(&snap)?);
    Ok(())
}
