//! Reference environments work queue and sessions events API (SQLite), served by airlock relay --api.
