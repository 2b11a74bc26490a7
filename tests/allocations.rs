//! Heap allocations per small message in steady state, on both sides of a connection: the
//! "no allocation per small message" of the hot path, counted rather than assumed. The whole
//! process is counted (both nodes, every task and timer), so a figure well below one per
//! message means that no step of the path allocates per message.

#![allow(clippy::unwrap_used)]

mod common;

use std::alloc::System;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use peerwire::{Keypair, Network};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The counter is the whole process's, and the test harness runs tests on threads side by
/// side: each case holds this for its whole run, so no other case's nodes are counted in it.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `case` alone, on a runtime like the other tests' (two workers).
fn alone(case: impl std::future::Future<Output = f64>) -> f64 {
    let _alone = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(case)
}

/// A consensus vote (34-36 bytes encoded): small, fixed-size, no heap of its own, so decoding
/// one needs none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Vote {
    height: u64,
    round: u32,
    block: [u8; 32],
}

fn vote(i: u32) -> Vote {
    Vote {
        height: u64::from(i),
        round: i % 7,
        block: [(i % 251) as u8; 32],
    }
}

const WARM_UP: u64 = 20_000;
const MEASURED: u64 = 20_000;
/// Messages sent before waiting for them all to arrive: well inside the default inbox.
const BATCH: usize = 1_000;
/// Allowed: not one per message, but what is shared by many: the encoding buffers (two
/// allocations per 8 KiB of small messages, 0.009 per vote), each acknowledgement round to a
/// persistent peer (about three, every 150 or so messages in these bursts; a lone message to a
/// persistent peer pays them alone) and the odd timer and ping. Measured 0.002-0.046; a step
/// that allocated per message would be 1.0 or more.
const PER_MESSAGE: f64 = 0.1;

/// The test config without the per-peer inbound rate limits (1 M messages/s by default), which
/// a burst at full speed would trip by design: this counts the path, not the policy.
fn unlimited() -> peerwire::Config {
    config()
        .max_inbound_messages_per_sec(0)
        .max_inbound_bytes_per_sec(0)
        .max_inbound_messages_per_sec_per_ip(0)
}

/// Sends `WARM_UP` then `MEASURED` messages from A to B (a persistent peer of A when
/// `persistent`), B's inbox drained as they come; returns the allocations per message of the
/// measured part.
async fn allocations_per_message<M>(make: impl Fn(u64) -> M, persistent: bool) -> f64
where
    M: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let (b, b_inbox) = Network::<M>::start(unlimited(), Keypair::generate())
        .await
        .unwrap();
    let b_id = b.local_peer_id();
    let a_config = if persistent {
        unlimited().persistent_peer(b.local_addr(), b_id)
    } else {
        unlimited()
    };
    let (a, _a_inbox) = Network::<M>::start(a_config, Keypair::generate())
        .await
        .unwrap();
    if !persistent {
        soon("connect", a.connect(b.local_addr())).await.unwrap();
    }
    eventually("a sees b", || a.is_connected(b_id)).await;
    eventually("b sees a", || b.is_connected(a.local_peer_id())).await;

    let received = Arc::new(AtomicU64::new(0));
    let drain = {
        let received = received.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(4096);
            while b_inbox.recv_many(&mut batch, 4096).await > 0 {
                received.fetch_add(batch.len() as u64, Relaxed);
                batch.clear();
            }
        })
    };
    let until = |n: u64| {
        let received = received.clone();
        async move {
            soon("every message", async {
                while received.load(Relaxed) < n {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
            .await;
        }
    };
    // Pre-built, so making them is not counted.
    let messages: Vec<M> = (0..WARM_UP + MEASURED).map(&make).collect();
    let (warm_up, measured) = messages.split_at(WARM_UP as usize);
    // In batches, each waited for: a best-effort inbox that overflows drops (by policy), and
    // the count would never be reached.
    let mut sent = 0;
    for batch in warm_up.chunks(BATCH) {
        for m in batch {
            a.send(b_id, m).await.unwrap();
        }
        sent += batch.len() as u64;
        until(sent).await;
    }
    let region = Region::new(GLOBAL);
    for batch in measured.chunks(BATCH) {
        for m in batch {
            a.send(b_id, m).await.unwrap();
        }
        sent += batch.len() as u64;
        until(sent).await;
    }
    // A buffer grown per message would show as reallocations, not allocations: both count.
    let change = region.change();
    let allocations = change.allocations + change.reallocations;

    a.shutdown().await;
    b.shutdown().await;
    drain.await.unwrap();
    allocations as f64 / MEASURED as f64
}

/// Runs `case` alone and checks its allocations per message against [`PER_MESSAGE`].
fn check(what: &str, case: impl std::future::Future<Output = f64>) {
    let per = alone(case);
    println!("{what}: {per:.4} allocations per message");
    assert!(
        per < PER_MESSAGE,
        "{what}: {per:.4} allocations per message"
    );
}

#[test]
fn a_small_typed_message_costs_no_allocation_on_either_side() {
    check(
        "typed vote, best effort",
        allocations_per_message(|i| vote(i as u32), false),
    );
}

#[test]
fn a_small_raw_message_costs_no_allocation_on_either_side() {
    let payload = Bytes::from(vec![7u8; 64]);
    check(
        "raw 64 B, best effort",
        allocations_per_message(move |_| payload.clone(), false),
    );
}

#[test]
fn a_small_typed_message_to_a_persistent_peer_costs_no_allocation() {
    check(
        "typed vote, persistent peer",
        allocations_per_message(|i| vote(i as u32), true),
    );
}

#[test]
fn a_small_raw_message_to_a_persistent_peer_costs_no_allocation() {
    let payload = Bytes::from(vec![7u8; 64]);
    check(
        "raw 64 B, persistent peer",
        allocations_per_message(move |_| payload.clone(), true),
    );
}
