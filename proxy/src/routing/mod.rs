//! Where a request goes: the config snapshot it sees from start to end ([`snapshot`]: one
//! arc-swap load per request, pools loaded) and which variant answers it ([`split`]:
//! `x-canary` when the key may choose, then the sticky bucket, then the weight).

pub mod snapshot;
pub mod split;
