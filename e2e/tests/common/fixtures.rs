//! What the scenarios create: their namespace, project specs, and data to write.

use serde_json::json;

pub const NS: &str = "default";

pub fn spec() -> serde_json::Value {
    json!({"quota": "100Mi", "owner": {"uid": 1000, "gid": 1000}})
}

/// A project spec with this quota and number of copies.
pub fn sized(quota: &str, copies: u8) -> serde_json::Value {
    json!({"quota": quota, "owner": {"uid": 1000, "gid": 1000}, "copies": copies})
}

/// `n` bytes that do not compress (xorshift from `seed`).
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
