//! Blobs in pieces over loopback: a push reaches every receiver with about one copy from the
//! pusher, a pull goes through whoever holds the blob, a receiver serving corrupt pieces is
//! caught and the others still finish, a receiver that dies mid-push is reported, and the
//! bounds refuse what does not fit with an error that says which bound.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use peerwire::protocols::swarm::{AddError, FetchError, Swarm, SwarmConfig, SwarmEvent};
use peerwire::{Network, PeerId};

const CONTROL: u16 = 30;
const PIECES: u16 = 31;

fn swarm_config() -> SwarmConfig {
    SwarmConfig::new(CONTROL, PIECES).piece_size(64 * 1024)
}

async fn swarm_mesh(configs: Vec<SwarmConfig>) -> Vec<(Network<Bytes>, Swarm)> {
    let nodes = mesh(configs.len(), swarm_config().declare(config())).await;
    nodes
        .into_iter()
        .zip(configs)
        .map(|((net, _), cfg)| {
            let swarm = net.swarm(cfg).unwrap();
            (net, swarm)
        })
        .collect()
}

fn payload(len: usize, salt: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt) ^ (i >> 13) as u8)
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_reaches_every_receiver_and_the_pusher_uploads_about_one_copy() {
    let nodes = swarm_mesh(vec![swarm_config(); 6]).await;
    let data = payload(4 << 20, 1);
    let (source, swarm) = &nodes[0];
    let blob = swarm.add(data.clone()).await.unwrap();
    let mut events = nodes[3].1.events();
    let receivers: Vec<PeerId> = nodes[1..].iter().map(|(n, _)| n.local_peer_id()).collect();
    let mut report = soon("the push", swarm.push(&blob, &receivers))
        .await
        .unwrap();
    report.completed.sort();
    let mut expected = receivers.clone();
    expected.sort();
    assert_eq!(report.completed, expected);
    assert!(report.failed.is_empty());
    for (net, swarm) in &nodes[1..] {
        assert_eq!(
            swarm.get(&blob).as_ref(),
            Some(&data),
            "{}",
            net.local_peer_id()
        );
        let progress = swarm.progress(&blob).unwrap();
        assert!(progress.is_complete());
        assert_eq!(progress.bad_pieces, 0);
    }
    let uploaded = swarm.progress(&blob).unwrap().uploaded_bytes;
    let copies = uploaded as f64 / data.len() as f64;
    assert!(copies <= 1.3, "the pusher uploaded {copies:.2} copies");
    let relayed: u64 = nodes[1..]
        .iter()
        .map(|(_, s)| s.progress(&blob).unwrap().uploaded_bytes)
        .sum();
    assert!(
        relayed as f64 >= 3.5 * data.len() as f64,
        "the receivers relayed {relayed} bytes"
    );
    // Receivers hear of the offer, then of the blob complete.
    assert_eq!(
        soon("an offer event", events.recv()).await.unwrap(),
        SwarmEvent::Offered {
            blob,
            from: source.local_peer_id(),
            len: data.len() as u64
        }
    );
    assert_eq!(
        soon("a complete event", events.recv()).await.unwrap(),
        SwarmEvent::Complete { blob }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_goes_through_whoever_holds_the_blob() {
    let nodes = swarm_mesh(vec![swarm_config(); 3]).await;
    let data = payload(1 << 20, 2);
    let blob = nodes[0].1.add(data.clone()).await.unwrap();
    let a = nodes[0].0.local_peer_id();
    let b = nodes[1].0.local_peer_id();
    let got = soon("B's fetch", nodes[1].1.fetch(&blob, &[a]))
        .await
        .unwrap();
    assert_eq!(got, data);
    // C is told only of B.
    let got = soon("C's fetch", nodes[2].1.fetch(&blob, &[b]))
        .await
        .unwrap();
    assert_eq!(got, data);
    assert_eq!(nodes[2].1.progress(&blob).unwrap().bad_pieces, 0);
    // A blob held already is returned at once; an empty blob is a blob too.
    assert_eq!(nodes[1].1.fetch(&blob, &[]).await.unwrap(), data);
    let empty = nodes[0].1.add(Bytes::new()).await.unwrap();
    assert_eq!(
        soon("an empty blob", nodes[2].1.fetch(&empty, &[a]))
            .await
            .unwrap(),
        Bytes::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_serving_corrupt_pieces_is_caught_and_the_others_finish() {
    let mut configs = vec![swarm_config(); 5];
    configs[2] = swarm_config().corrupt_uploads_for_tests();
    let nodes = swarm_mesh(configs).await;
    let data = payload(4 << 20, 3);
    let blob = nodes[0].1.add(data.clone()).await.unwrap();
    let receivers: Vec<PeerId> = nodes[1..].iter().map(|(n, _)| n.local_peer_id()).collect();
    let report = soon("the push", nodes[0].1.push(&blob, &receivers))
        .await
        .unwrap();
    // The honest receivers hold it. The liar is refused by the pusher once two of them have
    // caught it (then not waited for), unless it held everything first.
    let liar = nodes[2].0.local_peer_id();
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(
        report.completed.len() + report.refused.len(),
        4,
        "{report:?}"
    );
    assert!(report.refused.iter().all(|p| *p == liar), "{report:?}");
    let mut caught = 0;
    for (i, (net, swarm)) in nodes.iter().enumerate().skip(1) {
        if i == 2 {
            continue;
        }
        assert!(
            report.completed.contains(&net.local_peer_id()),
            "{report:?}"
        );
        assert_eq!(swarm.get(&blob).as_ref(), Some(&data), "receiver {i}");
        // Each honest receiver stops asking the liar after its first bad piece.
        let bad = swarm.progress(&blob).unwrap().bad_pieces;
        assert!(bad <= 1, "receiver {i} took {bad} bad pieces");
        caught += bad;
    }
    assert!(caught >= 1, "nobody caught the corrupt pieces");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_dies_mid_push_is_reported_and_the_others_finish() {
    let nodes = swarm_mesh(vec![swarm_config(); 5]).await;
    let data = payload(16 << 20, 4);
    let blob = nodes[0].1.add(data.clone()).await.unwrap();
    let receivers: Vec<PeerId> = nodes[1..].iter().map(|(n, _)| n.local_peer_id()).collect();
    let pusher = nodes[0].1.clone();
    let push = tokio::spawn(async move { pusher.push(&blob, &receivers).await });
    let dying = nodes[3].1.clone();
    eventually("the dying receiver's first piece", || {
        dying.progress(&blob).is_some_and(|p| p.pieces > 0)
    })
    .await;
    nodes[3].0.abort().await;
    let report = soon("the push", push).await.unwrap().unwrap();
    if !report.failed.is_empty() {
        assert_eq!(report.failed, vec![nodes[3].0.local_peer_id()]);
    }
    assert!(report.completed.len() >= 3, "{report:?}");
    for i in [1, 2, 4] {
        assert_eq!(nodes[i].1.get(&blob).as_ref(), Some(&data), "receiver {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_nobody_holds_is_waited_for_until_removed() {
    let nodes = swarm_mesh(vec![swarm_config(); 2]).await;
    let a = nodes[0].0.local_peer_id();
    let blob = nodes[0].1.add(payload(1000, 5)).await.unwrap();
    assert!(nodes[0].1.remove(&blob));
    let fetching = nodes[1].1.clone();
    let fetch = tokio::spawn(async move { fetching.fetch(&blob, &[a]).await });
    // A holds nothing now: the fetch waits, knowing no length.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!fetch.is_finished());
    let progress = nodes[1].1.progress(&blob).unwrap();
    assert_eq!((progress.pieces, progress.total), (0, 0));
    assert!(nodes[1].1.remove(&blob));
    assert_eq!(
        soon("the fetch", fetch).await.unwrap(),
        Err(FetchError::Removed)
    );
    assert!(nodes[1].1.progress(&blob).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bounds_refuse_what_does_not_fit_and_say_which() {
    let small = swarm_config().max_blob_size(100_000).max_blobs(2);
    let nodes = swarm_mesh(vec![swarm_config(), small]).await;
    let a = nodes[0].0.local_peer_id();
    let error = nodes[1].1.add(payload(100_001, 6)).await.unwrap_err();
    assert_eq!(
        error,
        AddError::TooLarge {
            len: 100_001,
            max: 100_000
        }
    );
    assert!(error.to_string().contains("max_blob_size"), "{error}");
    let big = nodes[0].1.add(payload(200_000, 6)).await.unwrap();
    let error = soon("the fetch", nodes[1].1.fetch(&big, &[a]))
        .await
        .unwrap_err();
    assert_eq!(
        error,
        FetchError::TooLarge {
            len: 200_000,
            max: 100_000
        }
    );
    // Two blobs at most, held or wanted.
    let one = nodes[1].1.add(payload(10, 7)).await.unwrap();
    nodes[1].1.add(payload(10, 8)).await.unwrap();
    let error = nodes[1].1.add(payload(10, 9)).await.unwrap_err();
    assert_eq!(error, AddError::TooManyBlobs { max: 2 });
    assert!(error.to_string().contains("remove one"), "{error}");
    assert!(nodes[1].1.remove(&one));
    nodes[1].1.add(payload(10, 9)).await.unwrap();
    // Offers beyond the bound are declined: the push reports the receiver failed.
    let report = soon(
        "the push",
        nodes[0].1.push(&big, &[nodes[1].0.local_peer_id()]),
    )
    .await
    .unwrap();
    assert_eq!(report.failed, vec![nodes[1].0.local_peer_id()]);
    assert_eq!(nodes[1].1.stats().offers_declined, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_with_its_data_directory_carries_on_from_the_pieces_it_kept() {
    let dir = TempDir::new("swarm-keep");
    let base = swarm_config().declare(config());
    let (a, _) = node(base.clone()).await;
    let a_swarm = a.swarm(swarm_config()).unwrap();
    let data = payload(2 << 20, 7);
    let blob = a_swarm.add(data.clone()).await.unwrap();
    let key = peerwire::Keypair::generate();
    let kept = base.clone().data_dir(dir.join("b"));
    {
        let (b, _) = node_reopening(kept.clone(), key.clone()).await;
        let b_swarm = b.swarm(swarm_config()).unwrap();
        soon("connect", b.connect(a.local_addr())).await.unwrap();
        let got = soon(
            "the first fetch",
            b_swarm.fetch(&blob, &[a.local_peer_id()]),
        )
        .await;
        assert_eq!(got.unwrap(), data);
        soon("shutdown", b.shutdown()).await;
    }
    // Restarted: the blob is held at once, from the data directory, with nothing fetched.
    let (b, _) = node_reopening(kept.clone(), key.clone()).await;
    let b_swarm = b.swarm(swarm_config()).unwrap();
    assert!(b_swarm.progress(&blob).is_some_and(|p| p.is_complete()));
    assert_eq!(b_swarm.fetch(&blob, &[]).await.unwrap(), data);
    assert_eq!(b_swarm.progress(&blob).unwrap().received_bytes, 0);
    // Removed: gone from the directory too.
    assert!(b_swarm.remove(&blob));
    soon("shutdown", b.shutdown()).await;
    drop((b, b_swarm));
    let (b, _) = node_reopening(kept, key).await;
    // Taken back while `swarm()` runs: nothing to wait for.
    let b_swarm = b.swarm(swarm_config()).unwrap();
    assert!(b_swarm.progress(&blob).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_beyond_memory_lives_in_the_data_directory_and_is_served_from_there() {
    let dir = TempDir::new("swarm-disk");
    let base = swarm_config().declare(config());
    let (a, _) = node(base.clone()).await;
    let a_swarm = a.swarm(swarm_config()).unwrap();
    let (b, _) = node(base.clone().data_dir(dir.join("b"))).await;
    let small = swarm_config().max_memory(1 << 20);
    let b_swarm = b.swarm(small).unwrap();
    let (c, _) = node(base).await;
    let c_swarm = c.swarm(swarm_config()).unwrap();
    soon("connect", b.connect(a.local_addr())).await.unwrap();
    soon("connect", c.connect(b.local_addr())).await.unwrap();
    let data = payload(8 << 20, 8);
    let blob = a_swarm.add(data.clone()).await.unwrap();
    // 8 MiB into a node with 1 MiB of memory for blobs: it lives on disk, and the fetch
    // reads it back from there.
    let got = soon("B's fetch", b_swarm.fetch(&blob, &[a.local_peer_id()])).await;
    assert_eq!(got.unwrap(), data);
    let stats = b_swarm.stats();
    assert_eq!((stats.memory_bytes, stats.disk_bytes), (0, 8 << 20));
    assert_eq!(b_swarm.get(&blob), None, "held on disk, not in memory");
    // C knows only B, which serves every piece from its disk.
    let got = soon("C's fetch", c_swarm.fetch(&blob, &[b.local_peer_id()])).await;
    assert_eq!(got.unwrap(), data);
    assert_eq!(b_swarm.progress(&blob).unwrap().uploaded_bytes, 8 << 20);
    // Restarted, B lists the blob from its data directory without loading it, and serves it
    // again, each piece checked as it is read.
    soon("shutdown", b.shutdown()).await;
    drop((b, b_swarm));
    let base = swarm_config().declare(config());
    let (b, _) = node_reopening(
        base.clone().data_dir(dir.join("b")),
        peerwire::Keypair::generate(),
    )
    .await;
    let b_swarm = b.swarm(swarm_config().max_memory(1 << 20)).unwrap();
    assert!(b_swarm.progress(&blob).unwrap().is_complete());
    let stats = b_swarm.stats();
    assert_eq!((stats.memory_bytes, stats.disk_bytes), (0, 8 << 20));
    let (d, _) = node(base).await;
    let d_swarm = d.swarm(swarm_config()).unwrap();
    soon("connect", d.connect(b.local_addr())).await.unwrap();
    let got = soon("D's fetch", d_swarm.fetch(&blob, &[b.local_peer_id()])).await;
    assert_eq!(got.unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_added_whole_beyond_memory_is_written_to_disk_in_full() {
    // More pieces than the writer's queue holds at once (4,096): `add` must wait for room
    // rather than give pieces up, since nobody else has them.
    let dir = TempDir::new("swarm-add-disk");
    let config_of = || swarm_config().piece_size(16 * 1024).max_memory(1 << 20);
    let base = swarm_config().declare(config());
    let (a, _) = node(base.clone().data_dir(dir.join("a"))).await;
    let a_swarm = a.swarm(config_of()).unwrap();
    let data = payload(80 << 20, 3);
    let blob = a_swarm.add(data.clone()).await.unwrap();
    let progress = a_swarm.progress(&blob).unwrap();
    assert!(
        progress.is_complete(),
        "added, yet incomplete: {progress:?}"
    );
    let stats = a_swarm.stats();
    assert_eq!((stats.memory_bytes, stats.disk_bytes), (0, 80 << 20));
    let (b, _) = node(base.clone()).await;
    let b_swarm = b.swarm(swarm_config().piece_size(16 * 1024)).unwrap();
    soon("connect", b.connect(a.local_addr())).await.unwrap();
    let got = soon("B's fetch", b_swarm.fetch(&blob, &[a.local_peer_id()])).await;
    assert!(got.unwrap() == data);
    // Every piece is in the data directory: a restart finds the blob complete.
    soon("shutdown", a.shutdown()).await;
    drop((a, a_swarm));
    let (a, _) = node_reopening(base.data_dir(dir.join("a")), peerwire::Keypair::generate()).await;
    let a_swarm = a.swarm(config_of()).unwrap();
    assert!(a_swarm.progress(&blob).unwrap().is_complete());
}
