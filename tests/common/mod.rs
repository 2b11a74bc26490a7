//! Helpers shared by the integration tests: start nodes on loopback, wait with timeouts.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use peerwire::{Config, Inbox, Keypair, Network, NetworkEvent, PeerId};

/// Generous bound for anything that should happen "soon" on loopback; tests never assert speed.
pub const SOON: Duration = Duration::from_secs(20);

pub fn config() -> Config {
    Config::default()
        .listen("127.0.0.1:0".parse().unwrap())
        .network_id("peerwire-test")
}

pub async fn node(config: Config) -> (Network<Bytes>, Inbox<Bytes>) {
    Network::start(config, Keypair::generate()).await.unwrap()
}

pub async fn soon<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(SOON, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Receives exactly `n` messages.
pub async fn recv_n<M>(inbox: &mut Inbox<M>, n: usize) -> Vec<(PeerId, M)> {
    let mut out = Vec::with_capacity(n);
    soon("messages", async {
        while out.len() < n {
            match inbox.recv().await {
                Some(m) => out.push(m),
                None => panic!("inbox closed after {} of {n} messages", out.len()),
            }
        }
    })
    .await;
    out
}

/// Polls `cond` until it holds.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    soon(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Waits for the next event matching `pred`.
pub async fn next_event(
    events: &mut tokio::sync::broadcast::Receiver<NetworkEvent>,
    pred: impl Fn(&NetworkEvent) -> bool,
) -> NetworkEvent {
    soon("event", async {
        loop {
            let e = events.recv().await.unwrap();
            if pred(&e) {
                return e;
            }
        }
    })
    .await
}

pub fn numbered(i: u32, len: usize) -> Bytes {
    let mut v = vec![(i % 251) as u8; len.max(4)];
    v[..4].copy_from_slice(&i.to_be_bytes());
    Bytes::from(v)
}

pub fn number_of(b: &Bytes) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
