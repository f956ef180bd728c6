//! Airlock tunnel (work in progress).
