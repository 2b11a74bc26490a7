//! A file larger than the swarm's memory, added with a data directory: it is read a piece at a
//! time, never whole, lives on disk, is served from there, and comes back after a restart.
//!
//! Alone in its test binary so that the process's resident memory is this test's own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;

use common::*;
use peerwire::protocols::swarm::SwarmConfig;

const CONTROL: u16 = 30;
const PIECES: u16 = 31;
const LEN: usize = 192 << 20;

fn swarm_config() -> SwarmConfig {
    SwarmConfig::new(CONTROL, PIECES).max_memory(1 << 20)
}

/// This process's resident set, in bytes (Linux; `None` elsewhere).
fn resident() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn chunk(at: usize) -> Vec<u8> {
    (0..1 << 20)
        .map(|i: usize| ((at + i) as u8).wrapping_mul(29) ^ ((at + i) >> 17) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_larger_than_memory_is_added_a_piece_at_a_time_and_lives_on_disk() {
    let dir = TempDir::new("swarm-file");
    std::fs::create_dir_all(&dir.0).unwrap();
    let path = dir.join("large.bin");
    // Written 1 MiB at a time, so the test itself never holds the file either.
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    for at in (0..LEN).step_by(1 << 20) {
        file.write_all(&chunk(at)).unwrap();
    }
    file.into_inner().unwrap().sync_all().unwrap();

    let base = swarm_config().declare(config());
    let (a, _) = node(base.clone().data_dir(dir.join("a"))).await;
    let a_swarm = a.swarm(swarm_config()).unwrap();
    let Some(before) = resident() else {
        return; // no /proc: nothing to measure on this platform
    };
    let adding = tokio::spawn({
        let a_swarm = a_swarm.clone();
        let path = path.clone();
        async move { a_swarm.add_file(&path).await }
    });
    let mut peak = before;
    while !adding.is_finished() {
        peak = peak.max(resident().unwrap_or(0));
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let blob = adding.await.unwrap().unwrap();
    peak = peak.max(resident().unwrap_or(0));
    // A window of 16 MiB of pieces in flight, the database's cache (32 MiB) and the
    // allocator's slack (the figure is printed); read whole, the growth would be at least
    // the file's 192 MiB.
    let growth = peak.saturating_sub(before);
    eprintln!(
        "adding a {} MiB file: resident memory grew by {} MiB",
        LEN >> 20,
        growth >> 20
    );
    assert!(
        growth < 128 << 20,
        "resident memory grew by {} MiB while adding a 192 MiB file",
        growth >> 20
    );
    let stats = a_swarm.stats();
    assert_eq!((stats.memory_bytes, stats.disk_bytes), (0, LEN as u64));
    assert!(a_swarm.progress(&blob).unwrap().is_complete());
    assert_eq!(a_swarm.get(&blob), None, "held on disk, not in memory");
    // The same file again: the same blob, nothing more reserved.
    assert_eq!(a_swarm.add_file(&path).await.unwrap(), blob);
    assert_eq!(a_swarm.stats().disk_bytes, LEN as u64);

    // Served from the disk: another node fetches it byte for byte.
    let (b, _) = node(base.clone()).await;
    let b_swarm = b.swarm(SwarmConfig::new(CONTROL, PIECES)).unwrap();
    soon("connect", b.connect(a.local_addr())).await.unwrap();
    let got = soon("B's fetch", b_swarm.fetch(&blob, &[a.local_peer_id()]))
        .await
        .unwrap();
    assert_eq!(got.len(), LEN);
    for at in (0..LEN).step_by(1 << 20) {
        assert!(got[at..at + (1 << 20)] == chunk(at)[..], "at {at}");
    }
    drop(got);

    // Restarted, A takes it back from its data directory, complete.
    soon("shutdown", a.shutdown()).await;
    drop((a, a_swarm));
    let (a, _) = node_reopening(base.data_dir(dir.join("a")), peerwire::Keypair::generate()).await;
    let a_swarm = a.swarm(swarm_config()).unwrap();
    assert!(a_swarm.progress(&blob).unwrap().is_complete());
    assert_eq!(a_swarm.stats().disk_bytes, LEN as u64);
}
