//! The self-hostable Airlock relay (see `README.md`).
#![forbid(unsafe_code)]

mod fsutil;
pub mod sni;
pub mod tls;
pub mod token;
