//! The TURN/STUN server of `--turn-server`: `creds` (REST-style credentials),
//! `bucket` (rate limits) and `server` (the protocol) are sans IO.

pub mod bucket;
pub mod creds;
pub mod server;
