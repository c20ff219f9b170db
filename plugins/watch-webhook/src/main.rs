//! `watch-webhook`: POSTs each mesh event (node join, node leave, leader change) as
//! JSON to a URL — `{"type":"WATCH_EVENT_NODE_JOIN","node":{...}}`, the proto3 JSON of
//! `v1.Event`. Events wait in a bounded queue; a failed POST is retried with backoff;
//! what cannot be delivered is dropped, counted and logged, so a dead receiver never
//! backs up into the node.
//!
//! Config: `url` (required), `queue` (default 1000 events), `retries` (default 5),
//! `timeout` (seconds per POST, default 5).

mod webhook;

fn main() -> std::process::ExitCode {
    webmesh_plugin_sdk::serve(webhook::Webhook::default())
}
