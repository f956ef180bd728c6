//! Serves a throwaway in-memory queue: `cargo run -p airlock-envqueue --example serve -- 127.0.0.1:8787`.
//! Prints one JSON line with `base_url`, `environment_id`, `environment_key` and `api_key`.

use airlock_envqueue::{Store, StoreOptions, router};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let store = Store::in_memory(StoreOptions::default())?;
    let creds = store.create_environment("example").await?;
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let mut v = serde_json::to_value(&creds)?;
    v["base_url"] = format!("http://{}", listener.local_addr()?).into();
    println!("{v}");
    axum::serve(listener, router(store)).await?;
    Ok(())
}
