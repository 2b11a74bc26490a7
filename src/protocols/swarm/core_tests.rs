//! The swarm's core, many nodes in one deterministic simulation: messages are delivered in
//! order through one queue and the clock moves only by hand.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::core::{Core, FetchError, Limits, Output, Placed, Progress, PushError, PushReport};
use super::merkle::{BlobId, Info, Tree};
use super::wire::Wire;
use crate::identity::PeerId;

fn limits() -> Limits {
    Limits {
        max_blob_size: 1 << 30,
        max_blobs: 4,
        max_memory: 1 << 30,
        max_disk: 0,
        pipeline: 4,
        upload_slots: 8,
        busy_retry: Duration::from_millis(250),
        endgame: 4,
        max_members: 64,
        timeout_min: Duration::from_secs(2),
        timeout_per_mib: Duration::from_secs(4),
        accept_offers: true,
        seed: 0,
    }
}

fn id(i: usize) -> PeerId {
    PeerId::from_bytes([i as u8 + 1; 32])
}

fn make_blob(len: usize, piece_size: u32) -> (Info, Tree, Bytes) {
    let data: Bytes = (0..len)
        .map(|i| (i * 7 % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let tree = Tree::build(data.chunks(piece_size as usize));
    let info = Info {
        len: len as u64,
        piece_size,
        root: tree.root(),
    };
    (info, tree, data)
}

struct Sim {
    nodes: Vec<Core>,
    queue: VecDeque<(usize, usize, Wire, Bytes)>,
    now: Instant,
    charges: Vec<(usize, usize, u32)>,
    complete: Vec<(usize, BlobId)>,
    pushed: Vec<(usize, PushReport)>,
    failed: Vec<(usize, FetchError)>,
    /// Nodes whose pieces are corrupted on the way out.
    liars: Vec<usize>,
    /// Nodes that answer nothing (their messages vanish).
    mute: Vec<usize>,
    /// Bytes of pieces sent, by sender.
    uploaded: Vec<u64>,
    /// What each node's data directory would hold: (node, blob, piece) → bytes.
    disk: std::collections::HashMap<(usize, BlobId, u32), Bytes>,
}

impl Sim {
    fn new(n: usize, limits: impl Fn(usize) -> Limits) -> Self {
        let now = Instant::now();
        let mut sim = Self {
            nodes: (0..n)
                .map(|i| {
                    Core::new(
                        Limits {
                            seed: i as u64 * 7919,
                            ..limits(i)
                        },
                        id(i),
                    )
                })
                .collect(),
            queue: VecDeque::new(),
            now,
            charges: Vec::new(),
            complete: Vec::new(),
            pushed: Vec::new(),
            failed: Vec::new(),
            liars: Vec::new(),
            mute: Vec::new(),
            uploaded: vec![0; n],
            disk: std::collections::HashMap::new(),
        };
        for a in 0..n {
            for b in 0..n {
                if a != b {
                    let mut out = Vec::new();
                    sim.nodes[a].on_connected(id(b), now, &mut out);
                    sim.apply(a, out);
                }
            }
        }
        sim
    }

    fn index(peer: PeerId) -> usize {
        peer.as_bytes()[0] as usize - 1
    }

    fn apply(&mut self, from: usize, out: Vec<Output>) {
        let mut written = Vec::new();
        for output in out {
            let output = match output {
                Output::KeepPiece {
                    blob,
                    index,
                    data,
                    release,
                    ..
                } => {
                    self.disk.insert((from, blob, index), data);
                    if let Some(incarnation) = release {
                        written.push((blob, index, incarnation));
                    }
                    continue;
                }
                Output::SendFromDisk {
                    peer,
                    blob,
                    index,
                    proof,
                    ..
                } => Output::Send {
                    peer,
                    wire: Wire::Piece {
                        blob,
                        piece: index,
                        proof,
                    },
                    data: self.disk.get(&(from, blob, index)).cloned(),
                },
                other => other,
            };
            match output {
                Output::Send { peer, wire, data } => {
                    if self.mute.contains(&from) {
                        continue;
                    }
                    let mut data = data.unwrap_or_default();
                    if matches!(wire, Wire::Piece { .. }) {
                        self.uploaded[from] += data.len() as u64;
                        if self.liars.contains(&from) {
                            let mut bad = data.to_vec();
                            bad[0] ^= 0xff;
                            data = bad.into();
                        }
                    }
                    self.queue.push_back((from, Self::index(peer), wire, data));
                }
                Output::Charge { peer, points, .. } => {
                    self.charges.push((from, Self::index(peer), points));
                }
                Output::Complete { blob } => self.complete.push((from, blob)),
                Output::Pushed { report, .. } => self.pushed.push((from, report)),
                Output::Failed { why, .. } => self.failed.push((from, why)),
                Output::Offered { .. }
                | Output::Keep { .. }
                | Output::KeepPiece { .. }
                | Output::SendFromDisk { .. }
                | Output::Forget { .. } => {}
            }
        }
        // Written: a node whose blob lives on disk drops the memory copies.
        for (blob, index, incarnation) in written {
            self.nodes[from].stored(&blob, index, incarnation);
        }
    }

    fn run(&mut self) {
        let mut steps = 0;
        while let Some((from, to, wire, data)) = self.queue.pop_front() {
            let mut out = Vec::new();
            self.nodes[to].on_wire(id(from), wire, data, self.now, &mut out);
            self.apply(to, out);
            steps += 1;
            assert!(steps < 1_000_000, "the simulation does not settle");
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        for i in 0..self.nodes.len() {
            let mut out = Vec::new();
            self.nodes[i].poll(self.now, &mut out);
            self.apply(i, out);
        }
        self.run();
    }

    fn disconnect(&mut self, gone: usize) {
        for i in 0..self.nodes.len() {
            if i != gone {
                let mut out = Vec::new();
                self.nodes[i].on_disconnected(id(gone), self.now, &mut out);
                self.apply(i, out);
            }
        }
        self.mute.push(gone);
        self.queue
            .retain(|(from, to, ..)| *from != gone && *to != gone);
    }

    fn add(&mut self, node: usize, info: Info, tree: Tree, data: Bytes) -> BlobId {
        let mut out = Vec::new();
        let blob = self.nodes[node].add(info, tree, data, &mut out).unwrap();
        self.apply(node, out);
        blob
    }

    /// Node `node` fetches `blob`, hinted at `hints`.
    fn fetch(&mut self, node: usize, blob: BlobId, hints: &[usize]) {
        let mut out = Vec::new();
        let hints: Vec<PeerId> = hints.iter().map(|i| id(*i)).collect();
        self.nodes[node]
            .fetch(blob, &hints, self.now, &mut out)
            .unwrap();
        self.apply(node, out);
    }

    fn push(&mut self, node: usize, blob: BlobId, to: &[usize]) {
        let mut out = Vec::new();
        let receivers: Vec<PeerId> = to.iter().map(|i| id(*i)).collect();
        self.nodes[node]
            .push(blob, &receivers, self.now, &mut out)
            .unwrap();
        self.apply(node, out);
    }

    fn holds(&mut self, node: usize, blob: &BlobId, data: &Bytes) -> bool {
        self.nodes[node].get(blob).as_ref() == Some(data)
    }
}

#[test]
fn a_push_to_eight_reaches_all_with_one_copy_from_the_source() {
    let mut sim = Sim::new(9, |_| limits());
    let (info, tree, data) = make_blob(256 * 1024 + 100, 1024);
    let blob = sim.add(0, info, tree, data.clone());
    sim.push(0, blob, &[1, 2, 3, 4, 5, 6, 7, 8]);
    sim.run();
    for r in 1..9 {
        assert!(sim.holds(r, &blob, &data), "receiver {r}");
        let progress = sim.nodes[r].progress(&blob).unwrap();
        assert!(progress.is_complete());
        assert!(
            progress.duplicate_bytes * 20 <= data.len() as u64,
            "receiver {r}: {} duplicate bytes",
            progress.duplicate_bytes
        );
    }
    let mut report = sim.pushed[0].1.clone();
    report.completed.sort();
    assert_eq!(report.completed, (1..9).map(id).collect::<Vec<_>>());
    assert!(report.failed.is_empty());
    // Every piece left the source exactly once; the receivers carried the other seven copies.
    assert_eq!(sim.uploaded[0], data.len() as u64);
    let relayed: u64 = sim.uploaded[1..].iter().sum();
    assert!(relayed >= 7 * data.len() as u64, "{relayed}");
    assert!(sim.charges.is_empty(), "{:?}", sim.charges);
}

#[test]
fn pieces_are_asked_rarest_first_and_receivers_start_on_different_ones() {
    // Node 0 holds everything, node 1 holds only the first half: node 2 asks node 1 first
    // for nothing rare... the rare pieces are the second half, held by node 0 alone.
    let mut sim = Sim::new(3, |_| limits());
    let (info, tree, data) = make_blob(64 * 1024, 1024);
    let blob = sim.add(0, info, tree, data.clone());
    let mut out = Vec::new();
    sim.nodes[2]
        .fetch(blob, &[id(0)], sim.now, &mut out)
        .unwrap();
    // Before anything is delivered, node 2 has asked nobody (it knows no pieces yet).
    assert!(out.iter().all(|o| !matches!(
        o,
        Output::Send {
            wire: Wire::Request { .. },
            ..
        }
    )));
    sim.apply(2, out);
    // Deliver the Have exchange only, then look at the first requests node 2 makes.
    let (from, to, wire, bytes) = sim.queue.pop_front().unwrap();
    let mut out = Vec::new();
    sim.nodes[to].on_wire(id(from), wire, bytes, sim.now, &mut out);
    // Node 0 answers with its full Have.
    let have = out
        .into_iter()
        .find_map(|o| match o {
            Output::Send {
                wire: w @ Wire::Have { .. },
                ..
            } => Some(w),
            _ => None,
        })
        .unwrap();
    // Node 1 is a member announcing the first half.
    let half: Vec<u8> = (0..8).map(|i| if i < 4 { 0xff } else { 0 }).collect();
    let mut out = Vec::new();
    sim.nodes[2].on_wire(
        id(1),
        Wire::Have {
            blob,
            info: Some(info),
            bits: half,
        },
        Bytes::new(),
        sim.now,
        &mut out,
    );
    sim.nodes[2].on_wire(id(0), have, Bytes::new(), sim.now, &mut out);
    let asked_of_0: Vec<u32> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send {
                peer,
                wire: Wire::Request { piece, .. },
                ..
            } if *peer == id(0) => Some(*piece),
            _ => None,
        })
        .collect();
    assert_eq!(asked_of_0.len(), 4, "the pipeline");
    assert!(
        asked_of_0.iter().all(|p| *p >= 32),
        "only node 0 holds 32..64: {asked_of_0:?}"
    );
    // Two fresh receivers of the same blob start on different pieces (per-node tie order).
    let first = |seed: u64| {
        let mut core = Core::new(Limits { seed, ..limits() }, id(5));
        let mut out = Vec::new();
        core.on_connected(id(0), sim.now, &mut out);
        core.fetch(blob, &[id(0)], sim.now, &mut out).unwrap();
        let full = vec![0xffu8; 8];
        core.on_wire(
            id(0),
            Wire::Have {
                blob,
                info: Some(info),
                bits: full,
            },
            Bytes::new(),
            sim.now,
            &mut out,
        );
        out.iter()
            .find_map(|o| match o {
                Output::Send {
                    wire: Wire::Request { piece, .. },
                    ..
                } => Some(*piece),
                _ => None,
            })
            .unwrap()
    };
    assert_ne!(first(1), first(2));
}

#[test]
fn a_corrupt_piece_is_caught_on_arrival_charged_and_its_sender_asked_nothing_more() {
    let mut sim = Sim::new(6, |_| limits());
    sim.liars.push(3);
    let (info, tree, data) = make_blob(128 * 1024, 1024);
    let blob = sim.add(0, info, tree, data.clone());
    sim.push(0, blob, &[1, 2, 3, 4, 5]);
    sim.run();
    // The liar's share came to it honestly from the source; its copies fail their proof, and
    // each piece of that share is fetched from the source once more, by the receiver next in
    // the offer's list, which the others fetch it from. No clock moved: no timeout was needed.
    for r in [1, 2, 4, 5] {
        assert!(sim.holds(r, &blob, &data), "receiver {r}");
        let bad = sim.nodes[r].progress(&blob).unwrap().bad_pieces;
        assert!(
            bad <= 1,
            "receiver {r} asked the liar again after its first bad piece"
        );
    }
    assert!(!sim.charges.is_empty());
    assert!(
        sim.charges
            .iter()
            .all(|(_, to, points)| *to == 3 && *points == 25),
        "{:?}",
        sim.charges
    );
    let copies = sim.uploaded[0] as f64 / data.len() as f64;
    assert!(copies <= 1.3, "the source uploaded {copies:.2} copies");
    // Two receivers or more told the pusher, which stopped serving the liar and ended the
    // push without waiting for it.
    assert_eq!(sim.nodes[0].stats().receivers_refused, 1);
    let report = &sim.pushed[0].1;
    assert_eq!(report.refused, vec![id(3)], "{report:?}");
    assert_eq!(report.completed.len(), 4, "{report:?}");
    assert!(report.failed.is_empty(), "{report:?}");
    // A receiver that caught the liar serves it nothing more of the blob; one that did not
    // still serves it.
    let mut caught = 0;
    for r in [1, 2, 4, 5] {
        let mut out = Vec::new();
        let before = sim.nodes[r].stats().liars_refused;
        sim.nodes[r].on_wire(
            id(3),
            Wire::Request { blob, piece: 0 },
            Bytes::new(),
            sim.now,
            &mut out,
        );
        let rejected = out.iter().any(|o| {
            matches!(
                o,
                Output::Send {
                    wire: Wire::Reject { .. },
                    ..
                }
            )
        });
        let bad = sim.nodes[r].progress(&blob).unwrap().bad_pieces;
        assert_eq!(rejected, bad == 1, "receiver {r}: {out:?}");
        assert_eq!(
            sim.nodes[r].stats().liars_refused,
            before + u64::from(rejected)
        );
        caught += usize::from(rejected);
    }
    assert!(caught >= 1, "nobody caught the liar");
}

#[test]
fn a_receiver_that_leaves_mid_push_hands_its_share_to_the_others() {
    let mut sim = Sim::new(5, |_| limits());
    let (info, tree, data) = make_blob(64 * 1024, 1024);
    let blob = sim.add(0, info, tree, data.clone());
    sim.push(0, blob, &[1, 2, 3, 4]);
    // A few exchanges happen, then receiver 2 vanishes.
    for _ in 0..40 {
        let Some((from, to, wire, bytes)) = sim.queue.pop_front() else {
            break;
        };
        let mut out = Vec::new();
        sim.nodes[to].on_wire(id(from), wire, bytes, sim.now, &mut out);
        sim.apply(to, out);
    }
    sim.disconnect(2);
    sim.run();
    for r in [1, 3, 4] {
        assert!(sim.holds(r, &blob, &data), "receiver {r}");
    }
    let report = &sim.pushed[0].1;
    assert_eq!(report.failed, vec![id(2)]);
    assert_eq!(report.completed.len(), 3);
    // Without a stall: the source still uploaded about one copy.
    assert!(
        sim.uploaded[0] <= data.len() as u64 * 13 / 10,
        "{}",
        sim.uploaded[0]
    );
}

#[test]
fn an_unanswered_request_is_asked_elsewhere_after_its_timeout() {
    let mut sim = Sim::new(3, |_| limits());
    let (info, tree, data) = make_blob(16 * 1024, 1024);
    let blob = sim.add(0, info, tree.clone(), data.clone());
    sim.add(1, info, tree, data.clone());
    sim.mute.push(1);
    sim.fetch(2, blob, &[1]);
    sim.run();
    // Node 1 is mute: nothing arrives. Node 0 is hinted later.
    assert_eq!(sim.nodes[2].progress(&blob).unwrap().pieces, 0);
    sim.fetch(2, blob, &[0]);
    sim.run();
    // Node 1 never said what it holds, so everything came from node 0 without a timeout.
    assert!(sim.holds(2, &blob, &data));
    assert_eq!(sim.nodes[2].progress(&blob).unwrap().timeouts, 0);

    // Now a member that announces everything and then goes silent (no endgame, so only a
    // timeout moves its pieces elsewhere).
    let mut sim = Sim::new(3, |_| Limits {
        endgame: 0,
        ..limits()
    });
    let blob = sim.add(0, info, Tree::build(data.chunks(1024)), data.clone());
    sim.add(1, info, Tree::build(data.chunks(1024)), data.clone());
    sim.fetch(2, blob, &[1]);
    // The Have exchange with node 1 goes through; its pieces never come.
    while let Some((from, to, wire, bytes)) = sim.queue.pop_front() {
        let request = matches!(wire, Wire::Request { .. });
        if request && to == 1 {
            continue;
        }
        let mut out = Vec::new();
        sim.nodes[to].on_wire(id(from), wire, bytes, sim.now, &mut out);
        sim.apply(to, out);
    }
    sim.mute.push(1);
    sim.fetch(2, blob, &[0]);
    sim.run();
    let before = sim.nodes[2].progress(&blob).unwrap();
    assert!(!before.is_complete());
    assert_eq!(before.timeouts, 0);
    sim.advance(Duration::from_millis(1999));
    assert_eq!(
        sim.nodes[2].progress(&blob).unwrap().timeouts,
        0,
        "not before 2 s"
    );
    sim.advance(Duration::from_millis(1));
    assert!(sim.nodes[2].progress(&blob).unwrap().timeouts > 0);
    for _ in 0..20 {
        sim.advance(Duration::from_secs(2));
    }
    assert!(sim.holds(2, &blob, &data));
}

#[test]
fn bounds_refuse_what_does_not_fit_and_say_why() {
    let small = |_| Limits {
        max_blob_size: 10_000,
        max_blobs: 2,
        ..limits()
    };
    let mut sim = Sim::new(2, small);
    let (info, tree, data) = make_blob(20_000, 1024);
    // Added locally: refused at once.
    let mut out = Vec::new();
    assert!(
        sim.nodes[0]
            .add(info, tree.clone(), data.clone(), &mut out)
            .is_err()
    );
    // Fetched: fails once a peer describes it.
    let mut big = Sim::new(2, |i| if i == 1 { small(i) } else { limits() });
    let blob = big.add(0, info, tree, data);
    big.fetch(1, blob, &[0]);
    big.run();
    assert_eq!(
        big.failed,
        vec![(
            1,
            FetchError::TooLarge {
                len: 20_000,
                max: 10_000
            }
        )]
    );
    assert!(big.nodes[1].progress(&blob).is_none());
    // Blobs at once.
    let mut out = Vec::new();
    for i in 0..2u8 {
        sim.nodes[1]
            .fetch(BlobId([i; 32]), &[], sim.now, &mut out)
            .unwrap();
    }
    assert_eq!(
        sim.nodes[1].fetch(BlobId([9; 32]), &[], sim.now, &mut out),
        Err(FetchError::TooManyBlobs { max: 2 })
    );
    // Offers declined when turned off, and a push to nobody connected ends at once.
    let mut sim = Sim::new(2, |i| Limits {
        accept_offers: i != 1,
        ..limits()
    });
    let (info, tree, data) = make_blob(5000, 1024);
    let blob = sim.add(0, info, tree, data);
    sim.push(0, blob, &[1]);
    sim.run();
    assert_eq!(sim.pushed[0].1.failed, vec![id(1)]);
    assert_eq!(sim.nodes[1].stats().offers_declined, 1);
    let mut out = Vec::new();
    assert_eq!(
        sim.nodes[0].push(BlobId([1; 32]), &[id(1)], sim.now, &mut out),
        Err(PushError::NotHeld(BlobId([1; 32])))
    );
}

#[test]
fn lies_about_the_blob_are_charged() {
    let mut sim = Sim::new(2, |_| limits());
    let (info, tree, data) = make_blob(5000, 1024);
    let blob = sim.add(0, info, tree, data);
    let mut out = Vec::new();
    sim.nodes[1].fetch(blob, &[], sim.now, &mut out).unwrap();
    let wrong = Info { len: 4999, ..info };
    let mut out = Vec::new();
    sim.nodes[1].on_wire(
        id(0),
        Wire::Have {
            blob,
            info: Some(wrong),
            bits: vec![],
        },
        Bytes::new(),
        sim.now,
        &mut out,
    );
    sim.nodes[1].on_wire(
        id(0),
        Wire::Offer {
            blob,
            info: wrong,
            members: vec![],
        },
        Bytes::new(),
        sim.now,
        &mut out,
    );
    sim.nodes[1].on_wire(
        id(0),
        Wire::Have {
            blob,
            info: Some(info),
            bits: vec![0xff; 3],
        },
        Bytes::new(),
        sim.now,
        &mut out,
    );
    // 5 pieces: one byte of bits, and no bit past the fifth.
    sim.nodes[1].on_wire(
        id(0),
        Wire::Have {
            blob,
            info: Some(info),
            bits: vec![0xff],
        },
        Bytes::new(),
        sim.now,
        &mut out,
    );
    sim.nodes[1].on_wire(
        id(0),
        Wire::Got {
            blob,
            pieces: vec![5],
        },
        Bytes::new(),
        sim.now,
        &mut out,
    );
    let points: Vec<u32> = out
        .iter()
        .filter_map(|o| match o {
            Output::Charge { points, .. } => Some(*points),
            _ => None,
        })
        .collect();
    assert_eq!(points, vec![10, 10, 5, 5]);
    // The last Got is from a peer that is not a member yet (every Have was refused): ignored.
    assert_eq!(sim.nodes[1].stats().unsolicited, 1);
}

#[test]
fn a_restored_blob_keeps_its_checked_pieces_and_fetches_only_the_rest() {
    let mut sim = Sim::new(2, |_| limits());
    let (info, tree, data) = make_blob(32 * 1024, 1024);
    let blob = sim.add(0, info, tree.clone(), data.clone());
    // Node 1 kept pieces 0..16 before a restart; one was altered on disk, and a record
    // names a piece past the end.
    let piece = |i: u32| data.slice(i as usize * 1024..(i as usize + 1) * 1024);
    let mut kept: Vec<_> = (0..16u32)
        .map(|i| (i, tree.proof(i), Some(piece(i)), 1024))
        .collect();
    kept[3].2 = Some(Bytes::from(vec![0u8; 1024]));
    kept.push((99, Vec::new(), Some(Bytes::new()), 0));
    assert_eq!(sim.nodes[1].restore(info, kept).unwrap(), (15, 2));
    assert_eq!(sim.nodes[1].progress(&blob).unwrap().pieces, 15);
    sim.fetch(1, blob, &[0]);
    sim.run();
    assert!(sim.holds(1, &blob, &data));
    // Only the 17 pieces it lacked crossed the wire.
    assert_eq!(
        sim.nodes[1].progress(&blob).unwrap().received_bytes,
        17 * 1024
    );
    assert_eq!(sim.uploaded[0], 17 * 1024);
}

#[test]
fn a_holder_serves_at_most_its_upload_slots_at_once_and_the_rest_come_back() {
    // Node 0 holds the blob with 2 upload slots; 5 fetchers know only node 0 at first.
    let mut sim = Sim::new(6, |i| Limits {
        upload_slots: if i == 0 { 2 } else { 8 },
        ..limits()
    });
    let (info, tree, data) = make_blob(64 * 1024, 1024);
    let blob = sim.add(0, info, tree, data.clone());
    for r in 1..6 {
        sim.fetch(r, blob, &[0]);
    }
    let mut most = 0;
    for _ in 0..40 {
        let mut steps = 0;
        while let Some((from, to, wire, bytes)) = sim.queue.pop_front() {
            let mut out = Vec::new();
            sim.nodes[to].on_wire(id(from), wire, bytes, sim.now, &mut out);
            sim.apply(to, out);
            most = most.max(sim.nodes[0].uploading(&blob));
            steps += 1;
            assert!(steps < 1_000_000);
        }
        sim.advance(Duration::from_millis(250));
    }
    assert!(most <= 2, "{most} peers served at once");
    assert!(sim.nodes[0].stats().busy > 0, "nobody was told to wait");
    for r in 1..6 {
        assert!(sim.holds(r, &blob, &data), "fetcher {r}");
    }
}

#[test]
fn a_blob_beyond_memory_lives_on_disk_and_is_served_from_there() {
    // Node 1 has room in memory for nothing this size, but a data directory.
    let mut sim = Sim::new(3, |i| match i {
        1 => Limits {
            max_memory: 1000,
            max_disk: 1 << 20,
            ..limits()
        },
        _ => limits(),
    });
    let (info, tree, data) = make_blob(64 * 1024, 1024);
    let blob = sim.add(0, info, tree, data.clone());
    sim.fetch(1, blob, &[0]);
    sim.run();
    assert!(sim.nodes[1].progress(&blob).unwrap().is_complete());
    assert!(sim.nodes[1].is_on_disk(&blob));
    let stats = sim.nodes[1].stats();
    assert_eq!((stats.memory_bytes, stats.disk_bytes), (0, 64 * 1024));
    // Not assembled from memory (the copies were dropped once written)...
    assert_eq!(sim.nodes[1].get(&blob), None);
    // ...yet served: node 2 knows only node 1 and gets every piece, from its disk.
    sim.fetch(2, blob, &[1]);
    sim.run();
    assert!(sim.holds(2, &blob, &data));
    assert_eq!(sim.uploaded[1], 64 * 1024);
    // Without a data directory the same blob is refused.
    let mut small = Sim::new(2, |i| Limits {
        max_memory: if i == 1 { 1000 } else { 1 << 30 },
        ..limits()
    });
    let (info, tree, data) = make_blob(64 * 1024, 1024);
    let blob = small.add(0, info, tree, data);
    small.fetch(1, blob, &[0]);
    small.run();
    assert_eq!(
        small.failed,
        vec![(
            1,
            FetchError::OutOfMemory {
                len: 64 * 1024,
                max: 1000
            }
        )]
    );
}

#[test]
fn one_accuser_is_not_enough_and_only_receivers_count() {
    let mut sim = Sim::new(4, |_| limits());
    let (info, tree, data) = make_blob(8 * 1024, 1024);
    let blob = sim.add(0, info, tree, data);
    sim.push(0, blob, &[1, 2, 3]);
    let mut out = Vec::new();
    let accuse = |peer: usize| Wire::Accuse {
        blob,
        peer: id(peer),
    };
    // Node 1 accuses node 2 twice, node 2 accuses itself, an outsider accuses: nothing.
    for (from, wire) in [
        (1, accuse(2)),
        (1, accuse(2)),
        (2, accuse(2)),
        (5, accuse(2)),
    ] {
        sim.nodes[0].on_wire(id(from), wire, Bytes::new(), sim.now, &mut out);
    }
    assert_eq!(sim.nodes[0].stats().receivers_refused, 0);
    // A second receiver: refused, and its requests are rejected.
    sim.nodes[0].on_wire(id(3), accuse(2), Bytes::new(), sim.now, &mut out);
    assert_eq!(sim.nodes[0].stats().receivers_refused, 1);
    let mut out = Vec::new();
    sim.nodes[0].on_wire(
        id(2),
        Wire::Request { blob, piece: 0 },
        Bytes::new(),
        sim.now,
        &mut out,
    );
    assert!(
        matches!(
            out.as_slice(),
            [Output::Send {
                wire: Wire::Reject { .. },
                ..
            }]
        ),
        "{out:?}"
    );
}

#[test]
fn a_second_push_to_receivers_that_hold_the_blob_ends_at_once() {
    let mut sim = Sim::new(3, |_| limits());
    let (info, tree, data) = make_blob(8 * 1024, 1024);
    let blob = sim.add(0, info, tree, data);
    sim.push(0, blob, &[1, 2]);
    sim.run();
    assert_eq!(sim.pushed.len(), 1);
    sim.push(0, blob, &[1, 2]);
    sim.run();
    assert_eq!(sim.pushed.len(), 2, "the second push never ended");
    let mut report = sim.pushed[1].1.clone();
    report.completed.sort();
    assert_eq!(report.completed, vec![id(1), id(2)]);
}

/// Node 0 offers node 1 a blob it never serves (1,000 bytes in pieces of 100); returns the
/// blob's id and node 1's answer.
fn junk_offer(sim: &mut Sim, salt: u8) -> (BlobId, Vec<Output>) {
    let info = Info {
        len: 1000,
        piece_size: 100,
        root: [salt; 32],
    };
    let wire = Wire::Offer {
        blob: info.id(),
        info,
        members: vec![],
    };
    let mut out = Vec::new();
    sim.nodes[1].on_wire(id(0), wire, Bytes::new(), sim.now, &mut out);
    (info.id(), out)
}

#[test]
fn offers_from_one_peer_are_bounded_and_descriptions_with_too_many_pieces_are_charged() {
    let mut sim = Sim::new(2, |_| Limits {
        max_blobs: 16,
        ..limits()
    });
    // Six offers of blobs node 0 never serves: four are taken, the rest declined.
    for salt in 0..6u8 {
        junk_offer(&mut sim, salt);
    }
    assert_eq!(sim.nodes[1].stats().offers_declined, 2);
    assert_eq!(sim.nodes[1].stats().blobs, 4);
    // 4 GiB in 1-byte pieces: refused before anything is sized for it.
    let info = Info {
        len: 4 << 30,
        piece_size: 1,
        root: [9; 32],
    };
    let mut out = Vec::new();
    let wire = Wire::Offer {
        blob: info.id(),
        info,
        members: vec![],
    };
    sim.nodes[1].on_wire(id(0), wire, Bytes::new(), sim.now, &mut out);
    assert!(
        matches!(out.as_slice(), [Output::Charge { points: 10, .. }]),
        "{out:?}"
    );
    assert_eq!(sim.nodes[1].stats().blobs, 4);
}

#[test]
fn offers_whose_pieces_never_come_are_dropped_unless_the_application_fetches_them() {
    let mut sim = Sim::new(2, |_| Limits {
        max_blobs: 16,
        ..limits()
    });
    // Node 0 offers four blobs and never serves a piece of them.
    sim.mute.push(0);
    let mut ids = Vec::new();
    for salt in 0..4u8 {
        let (blob, out) = junk_offer(&mut sim, salt);
        ids.push(blob);
        sim.apply(1, out);
    }
    sim.run();
    // The application waits for one of them: that one stays, however long it takes.
    sim.fetch(1, ids[0], &[0]);
    assert_eq!(
        sim.nodes[1].stats().offers_declined,
        0,
        "four offers are within the bound"
    );
    let idle = super::core::OFFER_IDLE;
    sim.advance(idle - Duration::from_secs(1));
    assert_eq!(sim.nodes[1].stats().blobs, 4, "not idle long enough yet");
    let deadline = sim.nodes[1]
        .next_deadline()
        .expect("a deadline for the idle offers");
    assert!(deadline <= sim.now + Duration::from_secs(1));
    sim.mute.clear();
    sim.advance(Duration::from_secs(1));
    let stats = sim.nodes[1].stats();
    assert_eq!((stats.offers_evicted, stats.blobs), (3, 1));
    assert!(
        sim.nodes[1].progress(&ids[0]).is_some(),
        "the fetched one stays"
    );
    for gone in &ids[1..] {
        assert!(sim.nodes[1].progress(gone).is_none());
    }
    // Their slots are free again: a fifth offer from the same peer is taken.
    let (_, out) = junk_offer(&mut sim, 9);
    assert!(
        !out.iter().any(|o| matches!(
            o,
            Output::Send {
                wire: Wire::Decline { .. },
                ..
            }
        )),
        "{out:?}"
    );
    assert_eq!(sim.nodes[1].stats().blobs, 2);
}

#[test]
fn a_file_added_on_disk_holds_a_slot_while_written_and_completes_a_fetch_of_it() {
    let on_disk = Limits {
        max_memory: 1000,
        max_disk: 1 << 20,
        max_blobs: 2,
        ..limits()
    };
    // Reservations: a slot and the length on disk each, given back when not added.
    let mut core = Core::new(on_disk.clone(), id(1));
    assert_eq!(
        core.reserve_added(500, None),
        Ok(Placed::Memory),
        "fits in memory: nothing reserved"
    );
    assert_eq!(core.reserve_added(64 * 1024, None), Ok(Placed::Disk));
    assert_eq!(core.reserve_added(64 * 1024, None), Ok(Placed::Disk));
    assert_eq!(core.stats().disk_bytes, 128 * 1024);
    assert!(matches!(
        core.reserve_added(64 * 1024, None),
        Err(super::core::AddError::TooManyBlobs { max: 2 })
    ));
    core.unreserve_file(64 * 1024);
    core.unreserve_file(64 * 1024);
    assert_eq!(core.stats().disk_bytes, 0);

    // Node 1 is fetching a blob (living on disk) when the same file is added there: the fetch
    // completes, its reservation is given back, and node 2 gets every piece from node 1's disk.
    let mut sim = Sim::new(3, |i| match i {
        1 => on_disk.clone(),
        _ => limits(),
    });
    let (info, tree, data) = make_blob(64 * 1024, 1024);
    let blob = sim.add(0, info, tree.clone(), data.clone());
    sim.fetch(1, blob, &[0]);
    // The offer and description go through; no piece does.
    while let Some((from, to, wire, bytes)) = sim.queue.pop_front() {
        if matches!(wire, Wire::Piece { .. }) {
            continue;
        }
        let mut out = Vec::new();
        sim.nodes[to].on_wire(id(from), wire, bytes, sim.now, &mut out);
        sim.apply(to, out);
    }
    assert_eq!(sim.nodes[1].progress(&blob).unwrap().pieces, 0);
    assert_eq!(sim.nodes[1].stats().disk_bytes, 64 * 1024);
    // Being fetched, it has its slot already.
    assert_eq!(
        sim.nodes[1].reserve_added(64 * 1024, Some(blob)),
        Ok(Placed::Disk)
    );
    for i in 0..64 {
        sim.disk.insert(
            (1, blob, i),
            data.slice(i as usize * 1024..(i as usize + 1) * 1024),
        );
    }
    let mut out = Vec::new();
    assert_eq!(sim.nodes[1].add_kept(info, tree, &mut out), blob);
    sim.apply(1, out);
    assert!(sim.complete.contains(&(1, blob)), "{:?}", sim.complete);
    assert!(sim.nodes[1].progress(&blob).unwrap().is_complete());
    assert!(sim.nodes[1].is_on_disk(&blob));
    let stats = sim.nodes[1].stats();
    assert_eq!((stats.memory_bytes, stats.disk_bytes), (0, 64 * 1024));
    // The slot came back too: one more blob fits, then no more.
    assert_eq!(
        sim.nodes[1].reserve_added(64 * 1024, None),
        Ok(Placed::Disk)
    );
    assert!(sim.nodes[1].reserve_added(64 * 1024, None).is_err());
    // Slots full, the same blob added again is here already: nothing to reserve.
    assert_eq!(
        sim.nodes[1].reserve_added(64 * 1024, Some(blob)),
        Ok(Placed::Held)
    );
    sim.nodes[1].unreserve_file(64 * 1024);
    sim.fetch(2, blob, &[1]);
    sim.run();
    assert!(sim.holds(2, &blob, &data));
    assert_eq!(sim.uploaded[1], 64 * 1024);
}

#[test]
fn a_late_write_of_a_removed_blob_leaves_the_pieces_of_the_same_blob_added_again_in_memory() {
    let on_disk = Limits {
        max_memory: 1000,
        max_disk: 1 << 20,
        ..limits()
    };
    let mut core = Core::new(on_disk, id(1));
    let (info, tree, data) = make_blob(8 * 1024, 1024);
    let releases = |out: Vec<Output>| -> Vec<u64> {
        out.into_iter()
            .filter_map(|o| match o {
                Output::KeepPiece {
                    index: 0, release, ..
                } => release,
                _ => None,
            })
            .collect()
    };
    let mut out = Vec::new();
    let blob = core
        .add(info, tree.clone(), data.clone(), &mut out)
        .unwrap();
    let first = releases(out);
    assert_eq!(
        first.len(),
        1,
        "piece 0 is written, then dropped from memory"
    );
    let mut out = Vec::new();
    assert!(core.remove(blob, &mut out));
    let mut out = Vec::new();
    core.add(info, tree, data, &mut out).unwrap();
    let again = releases(out);
    assert_eq!(again.len(), 1);
    assert_ne!(first, again, "the blob added again is another incarnation");
    let in_memory = |core: &Core| core.assembly(&blob).unwrap().pieces[0].0.is_some();
    // The first write of piece 0 finishes after the blob was added again: the new copy
    // stays in memory, since its own write has not been committed yet.
    core.stored(&blob, 0, first[0]);
    assert!(in_memory(&core), "dropped before its own write");
    core.stored(&blob, 0, again[0]);
    assert!(!in_memory(&core), "written: read from disk from now on");
}

/// One core, `id(0)`, driven by hand: what it is sent is written out message by message.
struct Hand {
    core: Core,
    now: Instant,
}

impl Hand {
    fn new(peers: usize) -> Self {
        Self::with(limits(), peers)
    }

    fn with(limits: Limits, peers: usize) -> Self {
        let now = Instant::now();
        let mut core = Core::new(limits, id(0));
        let mut out = Vec::new();
        for p in 1..=peers {
            core.on_connected(id(p), now, &mut out);
        }
        Self { core, now }
    }

    /// Delivers `wire` from `from`; returns the messages sent in answer, by receiver.
    fn from(&mut self, from: usize, wire: Wire, data: Bytes) -> Vec<(usize, Wire)> {
        let mut out = Vec::new();
        self.core.on_wire(id(from), wire, data, self.now, &mut out);
        sends(out)
    }

    /// Fetches `blob` hinted at `hints`; returns the messages sent.
    fn fetch(&mut self, blob: BlobId, hints: &[usize]) -> Vec<(usize, Wire)> {
        let hints: Vec<PeerId> = hints.iter().map(|i| id(*i)).collect();
        let mut out = Vec::new();
        self.core.fetch(blob, &hints, self.now, &mut out).unwrap();
        sends(out)
    }

    fn advance(&mut self, by: Duration) -> Vec<(usize, Wire)> {
        self.now += by;
        let mut out = Vec::new();
        self.core.poll(self.now, &mut out);
        sends(out)
    }
}

fn sends(out: Vec<Output>) -> Vec<(usize, Wire)> {
    out.into_iter()
        .filter_map(|o| match o {
            Output::Send { peer, wire, .. } => Some((Sim::index(peer), wire)),
            _ => None,
        })
        .collect()
}

/// The pieces asked of `of` among `sent`.
fn asked(sent: &[(usize, Wire)], of: usize) -> Vec<u32> {
    sent.iter()
        .filter_map(|(to, wire)| match wire {
            Wire::Request { piece, .. } if *to == of => Some(*piece),
            _ => None,
        })
        .collect()
}

fn haves_to(sent: &[(usize, Wire)], to: usize) -> usize {
    sent.iter()
        .filter(|(t, w)| *t == to && matches!(w, Wire::Have { .. }))
        .count()
}

/// An announcement of `bits` with the blob's description.
fn have(info: Info, bits: Vec<u8>) -> Wire {
    Wire::Have {
        blob: info.id(),
        info: Some(info),
        bits,
    }
}

/// Every piece of a blob of `n`, as announcement bits.
fn all_bits(n: usize) -> Vec<u8> {
    let mut bits = vec![0u8; n.div_ceil(8)];
    for i in 0..n {
        bits[i / 8] |= 1 << (i % 8);
    }
    bits
}

fn piece(blob: BlobId, tree: &Tree, data: &Bytes, i: u32) -> (Wire, Bytes) {
    let at = i as usize * 1024;
    (
        Wire::Piece {
            blob,
            piece: i,
            proof: tree.proof(i),
        },
        data.slice(at..(at + 1024).min(data.len())),
    )
}

#[test]
fn progress_reads_length_and_members_off_the_blob_and_is_complete_only_with_every_piece() {
    // Nothing known yet: no pieces of none is not complete.
    assert!(!Progress::default().is_complete());
    let mut sim = Sim::new(3, |_| limits());
    let (info, tree, data) = make_blob(8 * 1024 + 5, 1024);
    let blob = sim.add(0, info, tree, data.clone());
    sim.fetch(1, blob, &[]);
    let unknown = sim.nodes[1].progress(&blob).unwrap();
    assert_eq!((unknown.total, unknown.len, unknown.members), (0, 0, 0));
    assert!(!unknown.is_complete());
    sim.fetch(1, blob, &[0]);
    sim.run();
    let done = sim.nodes[1].progress(&blob).unwrap();
    assert_eq!(done.len, data.len() as u64);
    assert_eq!((done.pieces, done.total), (9, 9));
    assert_eq!(done.members, 1, "node 0; node 2 knows nothing of it");
    assert!(done.is_complete());
    assert_eq!(sim.nodes[0].progress(&blob).unwrap().members, 1);
}

#[test]
fn a_rejected_request_is_not_asked_of_that_member_again_and_a_reject_never_asked_is_ignored() {
    let (info, tree, data) = make_blob(8 * 1024, 1024);
    let blob = info.id();
    let mut hand = Hand::new(1);
    hand.fetch(blob, &[1]);
    let first = hand.from(1, have(info, all_bits(8)), Bytes::new());
    let asked_first = asked(&first, 1);
    assert_eq!(asked_first.len(), 4, "the pipeline: {first:?}");
    let rejected = asked_first[0];
    let never = (0..8).find(|i| !asked_first.contains(i)).unwrap();
    // A reject of a piece never asked changes nothing: node 1 still holds it for us.
    hand.from(1, Wire::Reject { blob, piece: never }, Bytes::new());
    // The reject of an asked piece: node 1 does not hold it after all.
    hand.from(
        1,
        Wire::Reject {
            blob,
            piece: rejected,
        },
        Bytes::new(),
    );
    // Every other piece arrives; everything left is asked again as time passes, but the
    // rejected piece never of node 1, and the piece rejected unasked is.
    let mut later = Vec::new();
    for i in asked_first.iter().filter(|i| **i != rejected) {
        let (wire, bytes) = piece(blob, &tree, &data, *i);
        later.extend(hand.from(1, wire, bytes));
    }
    for _ in 0..5 {
        later.extend(hand.advance(Duration::from_secs(3)));
    }
    let asked_later = asked(&later, 1);
    assert!(asked_later.contains(&never), "{asked_later:?}");
    assert!(!asked_later.contains(&rejected), "{asked_later:?}");
}

#[test]
fn a_busy_member_is_asked_again_after_the_retry_and_a_busy_never_asked_is_ignored() {
    let (info, tree, data) = make_blob(8 * 1024, 1024);
    let blob = info.id();
    let have = have(info, all_bits(8));
    let mut hand = Hand::new(1);
    hand.fetch(blob, &[1]);
    let first = asked(&hand.from(1, have.clone(), Bytes::new()), 1);
    assert_eq!(first.len(), 4, "the pipeline");
    // Busy for an asked piece: node 1 is asked nothing until `busy_retry` (250 ms) has
    // passed, then that piece again.
    let busy = hand.from(
        1,
        Wire::Busy {
            blob,
            piece: first[0],
        },
        Bytes::new(),
    );
    assert!(asked(&busy, 1).is_empty(), "{busy:?}");
    assert!(asked(&hand.advance(Duration::from_millis(249)), 1).is_empty());
    assert_eq!(
        asked(&hand.advance(Duration::from_millis(1)), 1),
        [first[0]]
    );

    // A busy for a piece never asked does not hold node 1 back: a piece arriving next
    // frees a place in the pipeline that is filled at once.
    let mut hand = Hand::new(1);
    hand.fetch(blob, &[1]);
    let first = asked(&hand.from(1, have, Bytes::new()), 1);
    let never = (0..8).find(|i| !first.contains(i)).unwrap();
    hand.from(1, Wire::Busy { blob, piece: never }, Bytes::new());
    let (wire, bytes) = piece(blob, &tree, &data, first[0]);
    let next = asked(&hand.from(1, wire, bytes), 1);
    assert_eq!(next.len(), 1, "{next:?}");
}

#[test]
fn members_are_told_once_and_answered_once_across_learning_the_description() {
    let (info, _, _) = make_blob(8 * 1024, 1024);
    let blob = info.id();
    let have = have(info, all_bits(8));
    // Hinted at 1 and 2, which are told at once; 2 gives the description.
    let mut hand = Hand::new(2);
    let told = hand.fetch(blob, &[1, 2]);
    assert_eq!((haves_to(&told, 1), haves_to(&told, 2)), (1, 1), "{told:?}");
    let answer = hand.from(2, have.clone(), Bytes::new());
    assert_eq!(
        haves_to(&answer, 2),
        1,
        "its first announcement is answered"
    );
    // Hinted at 1 again: it was told before the description was known, and is not again.
    assert_eq!(haves_to(&hand.fetch(blob, &[1]), 1), 0);

    // A member that announced before the description was known is answered once, not
    // again when it announces with the description.
    let mut hand = Hand::new(2);
    hand.fetch(blob, &[2]);
    let early = Wire::Have {
        blob,
        info: None,
        bits: Vec::new(),
    };
    assert_eq!(haves_to(&hand.from(1, early, Bytes::new()), 1), 1);
    hand.from(2, have.clone(), Bytes::new());
    assert_eq!(haves_to(&hand.from(1, have, Bytes::new()), 1), 0);
}

#[test]
fn an_upload_slot_is_freed_by_the_piece_announced_and_not_by_one_announced_again() {
    let (info, tree, data) = make_blob(8 * 1024, 1024);
    let mut hand = Hand::new(1);
    let mut out = Vec::new();
    let blob = hand.core.add(info, tree, data, &mut out).unwrap();
    let none = have(info, vec![0]);
    hand.from(1, none, Bytes::new());
    let request = |piece| Wire::Request { blob, piece };
    let got = |piece| Wire::Got {
        blob,
        pieces: vec![piece],
    };
    let served = hand.from(1, request(0), Bytes::new());
    assert!(matches!(served[..], [(1, Wire::Piece { piece: 0, .. })]));
    assert_eq!(hand.core.uploading(&blob), 1);
    hand.from(1, got(0), Bytes::new());
    assert_eq!(hand.core.uploading(&blob), 0, "piece 0 is held there now");

    // Piece 1 announced, asked for anyway and served: announcing it again frees nothing
    // (or a peer could hold the slot's place by repeating one announcement).
    hand.from(1, got(1), Bytes::new());
    hand.from(1, request(1), Bytes::new());
    assert_eq!(hand.core.uploading(&blob), 1);
    hand.from(1, got(1), Bytes::new());
    assert_eq!(hand.core.uploading(&blob), 1);
}

#[test]
fn a_member_caught_lying_still_frees_its_upload_slot_by_announcing_the_piece() {
    let (info, tree, data) = make_blob(16 * 1024, 1024);
    let blob = info.id();
    let have = have(info, all_bits(16));
    let mut hand = Hand::new(2);
    hand.fetch(blob, &[1, 2]);
    let of_2 = asked(&hand.from(2, have.clone(), Bytes::new()), 2);
    let of_1 = asked(&hand.from(1, have, Bytes::new()), 1);
    assert_eq!((of_1.len(), of_2.len()), (4, 4));
    for i in &of_2 {
        let (wire, bytes) = piece(blob, &tree, &data, *i);
        hand.from(2, wire, bytes);
    }
    // Node 1 is served a piece that node 2 gave, then caught sending a bad one.
    let served = hand.from(
        1,
        Wire::Request {
            blob,
            piece: of_2[0],
        },
        Bytes::new(),
    );
    assert!(
        served
            .iter()
            .any(|(to, w)| *to == 1 && matches!(w, Wire::Piece { .. })),
        "{served:?}"
    );
    assert_eq!(hand.core.uploading(&blob), 1);
    let (wire, bytes) = piece(blob, &tree, &data, of_1[0]);
    let mut bad = bytes.to_vec();
    bad[0] ^= 0xff;
    hand.from(1, wire, bad.into());
    assert_eq!(hand.core.progress(&blob).unwrap().bad_pieces, 1);
    assert_eq!(hand.core.stats().bad_pieces, 1);
    assert_eq!(hand.core.uploading(&blob), 1);
    // Its announcement of the served piece is not counted, but ends the upload.
    hand.from(
        1,
        Wire::Got {
            blob,
            pieces: vec![of_2[0]],
        },
        Bytes::new(),
    );
    assert_eq!(hand.core.uploading(&blob), 0);
}

#[test]
fn in_the_endgame_a_piece_is_asked_of_a_second_member_and_never_a_third() {
    // Two pieces, fewer than `endgame` (4): every piece missing is in the endgame.
    let (info, _, _) = make_blob(2 * 1024, 1024);
    let blob = info.id();
    let have = have(info, all_bits(2));
    let mut hand = Hand::new(3);
    hand.fetch(blob, &[1, 2, 3]);
    let sorted = |mut v: Vec<u32>| {
        v.sort_unstable();
        v
    };
    assert_eq!(
        sorted(asked(&hand.from(1, have.clone(), Bytes::new()), 1)),
        [0, 1]
    );
    assert_eq!(
        sorted(asked(&hand.from(2, have.clone(), Bytes::new()), 2)),
        [0, 1]
    );
    assert!(asked(&hand.from(3, have, Bytes::new()), 3).is_empty());
}

#[test]
fn adding_keeps_the_buffer_counts_its_memory_once_and_completes_a_fetch_of_it() {
    let mut hand = Hand::new(1);
    assert_eq!(hand.core.connected_peers(), [id(1)]);
    let mut out = Vec::new();
    let (info, tree, data) = make_blob(4 * 1024, 1024);
    let a = hand
        .core
        .add(info, tree.clone(), data.clone(), &mut out)
        .unwrap();
    assert!(out.iter().any(|o| matches!(o, Output::Keep { .. })));
    assert_eq!(hand.core.stats().memory_bytes, 4096);
    assert!(!hand.core.is_on_disk(&a));
    let listed = hand.core.blobs();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0, a);
    assert!(listed[0].1.is_complete());
    // No copy: the blob handed out is the buffer added.
    assert_eq!(hand.core.get(&a).unwrap().as_ptr(), data.as_ptr());
    // Added again: nothing to do, nothing counted twice.
    let mut again = Vec::new();
    assert_eq!(hand.core.add(info, tree, data, &mut again), Ok(a));
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(hand.core.stats().memory_bytes, 4096);

    // A blob fetched, not known yet, then added: the fetch completes, its memory counted.
    let (info, tree, data) = make_blob(4 * 1024, 2048);
    let b = info.id();
    hand.fetch(b, &[]);
    let mut added = Vec::new();
    hand.core.add(info, tree, data, &mut added).unwrap();
    assert!(
        added
            .iter()
            .any(|o| matches!(o, Output::Complete { blob } if *blob == b)),
        "{added:?}"
    );
    assert_eq!(hand.core.stats().memory_bytes, 8192);

    // A blob fetched whose description is known (its memory reserved then), then added:
    // counted once.
    let (info, tree, data) = make_blob(4 * 1024, 512);
    let c = info.id();
    hand.fetch(c, &[1]);
    let none = have(info, Vec::new());
    hand.from(1, none, Bytes::new());
    assert_eq!(hand.core.stats().memory_bytes, 12_288);
    hand.core.add(info, tree, data, &mut out).unwrap();
    assert_eq!(hand.core.stats().memory_bytes, 12_288);
    assert!(hand.core.progress(&c).unwrap().is_complete());
}

#[test]
fn a_fetched_blob_is_assembled_once_and_still_serves_every_piece() {
    let mut sim = Sim::new(3, |_| limits());
    let (info, tree, data) = make_blob(8 * 1024 + 300, 1024);
    let blob = sim.add(0, info, tree, data.clone());
    sim.fetch(1, blob, &[0]);
    sim.run();
    let first = sim.nodes[1].get(&blob).unwrap();
    assert_eq!(first, data);
    let second = sim.nodes[1].get(&blob).unwrap();
    assert_eq!(second.as_ptr(), first.as_ptr(), "assembled once");
    // Its pieces are now slices of that buffer: node 2, with node 0 gone, gets them right.
    sim.disconnect(0);
    sim.fetch(2, blob, &[1]);
    sim.run();
    assert!(sim.holds(2, &blob, &data));
    assert_eq!(sim.nodes[2].progress(&blob).unwrap().bad_pieces, 0);
}

#[test]
fn a_blob_goes_to_memory_then_disk_each_up_to_its_bound_and_the_size_bound_is_inclusive() {
    let mut hand = Hand::with(
        Limits {
            max_blob_size: 4096,
            max_memory: 4096,
            max_disk: 8192,
            ..limits()
        },
        0,
    );
    let mut out = Vec::new();
    let mut add = |hand: &mut Hand, piece_size| {
        let (info, tree, data) = make_blob(4096, piece_size);
        hand.core.add(info, tree, data, &mut out)
    };
    let a = add(&mut hand, 4096).unwrap();
    assert!(!hand.core.is_on_disk(&a));
    let b = add(&mut hand, 2048).unwrap();
    assert!(hand.core.is_on_disk(&b));
    assert_eq!(hand.core.stats().disk_bytes, 4096);
    add(&mut hand, 1024).unwrap();
    assert_eq!(
        (hand.core.stats().memory_bytes, hand.core.stats().disk_bytes),
        (4096, 8192)
    );
    assert!(matches!(
        add(&mut hand, 512),
        Err(super::core::AddError::OutOfMemory { .. })
    ));
    let (info, tree, data) = make_blob(4097, 1024);
    assert!(matches!(
        hand.core.add(info, tree, data, &mut Vec::new()),
        Err(super::core::AddError::TooLarge { len: 4097, .. })
    ));
}

#[test]
fn a_file_kept_on_disk_gives_back_its_reservation_when_the_blob_is_here_already() {
    let disk = Limits {
        max_memory: 4096,
        max_disk: 1 << 20,
        ..limits()
    };
    // Held in memory (complete) while its file was written: it stays in memory, and the
    // file's disk reservation is given back.
    let mut core = Core::new(disk.clone(), id(0));
    let (info, tree, data) = make_blob(4096, 1024);
    let mut out = Vec::new();
    core.add(info, tree.clone(), data, &mut out).unwrap();
    assert!(matches!(core.reserve_added(4096, None), Ok(Placed::Disk)));
    assert_eq!(core.stats().disk_bytes, 4096);
    let mut kept = Vec::new();
    core.add_kept(info, tree, &mut kept);
    assert!(kept.is_empty(), "{kept:?}");
    assert_eq!(
        (core.stats().memory_bytes, core.stats().disk_bytes),
        (4096, 0)
    );
    assert!(!core.is_on_disk(&info.id()));

    // Fetched, its description not known, while its file was written: the reservation now
    // covers it, and the memory of the other blob stays counted.
    let mut core = Core::new(disk.clone(), id(0));
    let (small, tree_small, data_small) = make_blob(1024, 1024);
    core.add(small, tree_small, data_small, &mut out).unwrap();
    let (info, tree, _) = make_blob(4096, 2048);
    core.fetch(info.id(), &[], Instant::now(), &mut out)
        .unwrap();
    assert!(matches!(core.reserve_added(4096, None), Ok(Placed::Disk)));
    let mut kept = Vec::new();
    core.add_kept(info, tree, &mut kept);
    assert!(
        kept.iter()
            .any(|o| matches!(o, Output::Complete { blob } if *blob == info.id()))
    );
    assert_eq!(
        (core.stats().memory_bytes, core.stats().disk_bytes),
        (1024, 4096)
    );
    assert!(core.is_on_disk(&info.id()));
}

#[test]
fn restored_pieces_past_the_end_or_of_the_wrong_length_or_proof_are_dropped_without_a_panic() {
    let (info, tree, data) = make_blob(4 * 1024, 1024);
    let good = |i: u32| {
        let at = i as usize * 1024;
        (i, tree.proof(i), Some(data.slice(at..at + 1024)), 1024)
    };
    let pieces = vec![
        good(0),
        good(0),                                                // twice
        (4, tree.proof(3), Some(data.slice(..1024)), 1024),     // past the end
        (1, tree.proof(1), Some(data.slice(..1024)), 1024),     // another piece's bytes
        (2, tree.proof(2), Some(data.slice(2048..3000)), 1024), // short
        good(3),
    ];
    let mut core = Core::new(limits(), id(0));
    assert_eq!(core.restore(info, pieces), Ok((2, 4)));
    let progress = core.progress(&info.id()).unwrap();
    assert_eq!((progress.pieces, progress.total), (2, 4));
}

#[test]
fn where_a_blob_would_live_is_memory_then_disk_then_nowhere() {
    let mut core = Core::new(
        Limits {
            max_memory: 4096,
            max_disk: 8192,
            ..limits()
        },
        id(0),
    );
    assert_eq!(core.would_live_on_disk(4096), Some(false));
    assert_eq!(core.would_live_on_disk(4097), Some(true));
    assert_eq!(core.would_live_on_disk(8193), None);
    let (info, tree, data) = make_blob(4096, 1024);
    core.add(info, tree, data, &mut Vec::new()).unwrap();
    assert_eq!(core.would_live_on_disk(1), Some(true));
}

#[test]
fn hints_are_remembered_once_each_up_to_the_member_bound_and_asked_when_they_connect() {
    let (info, _, _) = make_blob(4 * 1024, 1024);
    let blob = info.id();
    let mut hand = Hand::new(0);
    assert!(
        hand.fetch(blob, &[1, 1, 2, 0]).is_empty(),
        "nobody is connected"
    );
    assert_eq!(hand.core.hints(&blob), 2, "once each, and never this node");
    let mut out = Vec::new();
    hand.core.on_connected(id(2), hand.now, &mut out);
    assert_eq!(
        haves_to(&sends(out), 2),
        1,
        "a hint is asked when it connects"
    );
    // Offers can name 256 members each: hints stop at `max_members` (64).
    let many: Vec<PeerId> = (3..200).map(id).collect();
    hand.core
        .fetch(blob, &many, hand.now, &mut Vec::new())
        .unwrap();
    assert_eq!(hand.core.hints(&blob), 64);
}

#[test]
fn a_push_offers_once_to_each_connected_receiver_and_reports_the_others_once() {
    let (info, tree, data) = make_blob(4 * 1024, 1024);
    let mut hand = Hand::new(2);
    let mut out = Vec::new();
    let blob = hand.core.add(info, tree, data, &mut out).unwrap();
    let mut out = Vec::new();
    hand.core
        .push(
            blob,
            &[id(1), id(1), id(0), id(3), id(2), id(3)],
            hand.now,
            &mut out,
        )
        .unwrap();
    let offers: Vec<usize> = sends(out)
        .into_iter()
        .filter(|(_, w)| matches!(w, Wire::Offer { .. }))
        .map(|(to, _)| to)
        .collect();
    assert_eq!(offers, [1, 2]);
    // Both announce everything but the last piece: not done yet; then the rest: done, and
    // the report names the unconnected receiver once.
    let mut pushed = Vec::new();
    for r in [1, 2] {
        let mut out = Vec::new();
        let partial = have(info, vec![0b0111]);
        hand.core
            .on_wire(id(r), partial, Bytes::new(), hand.now, &mut out);
        assert!(!out.iter().any(|o| matches!(o, Output::Pushed { .. })));
    }
    for r in [1, 2] {
        let mut out = Vec::new();
        let last = Wire::Got {
            blob,
            pieces: vec![3],
        };
        hand.core
            .on_wire(id(r), last, Bytes::new(), hand.now, &mut out);
        pushed.extend(out.into_iter().filter_map(|o| match o {
            Output::Pushed { report, .. } => Some(report),
            _ => None,
        }));
    }
    assert_eq!(pushed.len(), 1, "{pushed:?}");
    assert_eq!(pushed[0].completed, [id(1), id(2)]);
    assert_eq!(pushed[0].failed, [id(3)]);
}

#[test]
fn a_receiver_already_partway_is_not_counted_done_until_it_holds_everything() {
    let (info, tree, data) = make_blob(4 * 1024, 1024);
    let mut hand = Hand::new(1);
    let blob = hand.core.add(info, tree, data, &mut Vec::new()).unwrap();
    // Node 1 is a member already, holding one piece.
    let partial = have(info, vec![0b0001]);
    hand.from(1, partial, Bytes::new());
    let mut out = Vec::new();
    hand.core.push(blob, &[id(1)], hand.now, &mut out).unwrap();
    let more = Wire::Got {
        blob,
        pieces: vec![1, 2],
    };
    hand.core
        .on_wire(id(1), more, Bytes::new(), hand.now, &mut out);
    assert!(
        !out.iter().any(|o| matches!(o, Output::Pushed { .. })),
        "{out:?}"
    );
    // Ended by its caller: a new push of the blob may start (and is the one reported).
    hand.core.end_push(&blob);
    assert!(
        hand.core
            .push(blob, &[id(1)], hand.now, &mut Vec::new())
            .is_ok()
    );
    let last = Wire::Got {
        blob,
        pieces: vec![3],
    };
    let mut done = Vec::new();
    hand.core
        .on_wire(id(1), last, Bytes::new(), hand.now, &mut done);
    assert!(
        done.iter()
            .any(|o| matches!(o, Output::Pushed { report, .. } if report.completed == [id(1)])),
        "{done:?}"
    );
}

#[test]
fn a_piece_lost_before_it_was_written_is_fetched_again() {
    let mut core = Core::new(
        Limits {
            max_memory: 1024,
            max_disk: 1 << 20,
            ..limits()
        },
        id(0),
    );
    let (info, tree, data) = make_blob(4 * 1024, 1024);
    let blob = core.add(info, tree, data, &mut Vec::new()).unwrap();
    assert!(core.is_on_disk(&blob));
    core.lost(&blob, 2);
    let progress = core.progress(&blob).unwrap();
    assert_eq!(progress.pieces, 3);
    assert!(!progress.is_complete());
    // A blob in memory loses nothing this way.
    let mut core = Core::new(limits(), id(0));
    let (info, tree, data) = make_blob(4 * 1024, 1024);
    let blob = core.add(info, tree, data, &mut Vec::new()).unwrap();
    core.lost(&blob, 2);
    assert!(core.progress(&blob).unwrap().is_complete());
}

#[test]
fn removing_a_blob_fails_only_an_unfinished_fetch_and_frees_its_bytes() {
    let mut core = Core::new(limits(), id(0));
    let (info, tree, data) = make_blob(4 * 1024, 1024);
    let held = core.add(info, tree, data, &mut Vec::new()).unwrap();
    let mut out = Vec::new();
    assert!(core.remove(held, &mut out));
    assert!(out.iter().any(|o| matches!(o, Output::Forget { .. })));
    assert!(
        !out.iter().any(|o| matches!(o, Output::Failed { .. })),
        "{out:?}"
    );
    assert_eq!(core.stats().memory_bytes, 0);
    let wanted = BlobId([7; 32]);
    core.fetch(wanted, &[], Instant::now(), &mut Vec::new())
        .unwrap();
    let mut out = Vec::new();
    assert!(core.remove(wanted, &mut out));
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Failed {
            why: FetchError::Removed,
            ..
        }
    )));
    assert!(!core.remove(wanted, &mut Vec::new()), "gone already");
}

#[test]
fn offers_count_against_their_own_pusher_only_and_only_while_incomplete() {
    let mut sim = Sim::new(2, |_| Limits {
        max_blobs: 16,
        ..limits()
    });
    // Four fetches of this node's own, not complete, are not node 0's offers.
    for salt in 0..4u8 {
        let mut out = Vec::new();
        sim.nodes[1]
            .fetch(BlobId([100 + salt; 32]), &[], sim.now, &mut out)
            .unwrap();
    }
    // Nor is a blob node 0 offered that is complete here.
    let (info, tree, data) = make_blob(4 * 1024, 1024);
    let wire = Wire::Offer {
        blob: info.id(),
        info,
        members: vec![id(1)],
    };
    let mut out = Vec::new();
    sim.nodes[1].on_wire(id(0), wire, Bytes::new(), sim.now, &mut out);
    sim.nodes[1].add(info, tree, data, &mut out).unwrap();
    for salt in 0..4u8 {
        junk_offer(&mut sim, salt);
    }
    assert_eq!(sim.nodes[1].stats().offers_declined, 0);
    junk_offer(&mut sim, 4);
    assert_eq!(sim.nodes[1].stats().offers_declined, 1);
}

#[test]
fn messages_about_nothing_asked_are_counted_once_each_and_change_nothing() {
    let (info, tree, data) = make_blob(4 * 1024, 1024);
    let mut hand = Hand::new(3);
    let blob = hand.core.add(info, tree, data, &mut Vec::new()).unwrap();
    let unsolicited = |hand: &Hand| hand.core.stats().unsolicited;
    let got = |blob| Wire::Got {
        blob,
        pieces: vec![0],
    };
    hand.from(1, got(BlobId([5; 32])), Bytes::new());
    assert_eq!(unsolicited(&hand), 1, "a blob not here");
    hand.from(1, got(blob), Bytes::new());
    assert_eq!(unsolicited(&hand), 2, "from a peer that is not a member");
    let accuse = Wire::Accuse { blob, peer: id(2) };
    hand.from(1, accuse.clone(), Bytes::new());
    assert_eq!(unsolicited(&hand), 3, "no push of it");
    hand.core
        .push(blob, &[id(2), id(3)], hand.now, &mut Vec::new())
        .unwrap();
    hand.from(1, accuse, Bytes::new());
    assert_eq!(unsolicited(&hand), 4, "the accuser is not a receiver");
    hand.from(2, Wire::Accuse { blob, peer: id(2) }, Bytes::new());
    assert_eq!(unsolicited(&hand), 5, "a receiver accusing itself");
    assert_eq!(hand.core.stats().receivers_refused, 0);
    let elsewhere = BlobId([6; 32]);
    let none = Wire::Have {
        blob: elsewhere,
        info: None,
        bits: Vec::new(),
    };
    hand.from(1, none, Bytes::new());
    assert_eq!(unsolicited(&hand), 6, "an announcement of a blob not here");
    let rejected = hand.from(
        1,
        Wire::Request {
            blob: elsewhere,
            piece: 0,
        },
        Bytes::new(),
    );
    assert!(matches!(rejected[..], [(1, Wire::Reject { .. })]));
    assert_eq!(unsolicited(&hand), 7, "a request for a blob not here");
    let stray = |blob| Wire::Piece {
        blob,
        piece: 0,
        proof: Vec::new(),
    };
    hand.from(1, stray(elsewhere), Bytes::from_static(b"x"));
    assert_eq!(unsolicited(&hand), 8, "a piece of a blob not here");
    hand.fetch(elsewhere, &[]);
    hand.from(1, stray(elsewhere), Bytes::from_static(b"x"));
    assert_eq!(unsolicited(&hand), 9, "a piece of a blob not described yet");
}

#[test]
fn a_peer_connecting_is_told_only_of_the_blobs_it_was_hinted_for() {
    let (info, tree, data) = make_blob(4 * 1024, 1024);
    let mut hand = Hand::new(0);
    hand.core.add(info, tree, data, &mut Vec::new()).unwrap();
    let mut out = Vec::new();
    hand.core.on_connected(id(5), hand.now, &mut out);
    assert!(sends(out).is_empty());
}

#[test]
fn a_receiver_that_left_keeps_its_share_dealt_round_when_it_comes_back() {
    // This node (0) is one of three receivers of node 1's push: 0, 2, 3. Piece i is
    // receiver i mod 3's share.
    let (info, tree, data) = make_blob(12 * 1024, 1024);
    let blob = info.id();
    let mut hand = Hand::new(3);
    let offer = Wire::Offer {
        blob,
        info,
        members: vec![id(0), id(2), id(3)],
    };
    hand.from(1, offer, Bytes::new());
    let whole = have(info, all_bits(12));
    let mut first = asked(&hand.from(1, whole, Bytes::new()), 1);
    first.sort_unstable();
    assert_eq!(first, [0, 3, 6, 9], "its own share");
    // Node 3 leaves and comes back: its share (2, 5, 8, 11) is still dealt round, piece
    // 2 and 8 and 11 to this node (5 to node 2).
    hand.core.on_disconnected(id(3), hand.now, &mut Vec::new());
    assert_eq!(hand.core.departed(&blob), 1);
    hand.core.on_connected(id(3), hand.now, &mut Vec::new());
    let mut later = Vec::new();
    for i in first {
        let (wire, bytes) = piece(blob, &tree, &data, i);
        later.extend(hand.from(1, wire, bytes));
    }
    let mut asked_later = asked(&later, 1);
    asked_later.sort_unstable();
    assert_eq!(asked_later, [2, 8, 11]);
    hand.core.on_disconnected(id(3), hand.now, &mut Vec::new());
    assert_eq!(hand.core.departed(&blob), 1, "remembered once");
}

#[test]
fn departed_members_are_remembered_up_to_the_offer_bound() {
    let (info, _, _) = make_blob(4 * 1024, 1024);
    let blob = info.id();
    let mut hand = Hand::new(0);
    hand.fetch(blob, &[]);
    let none = have(info, Vec::new());
    // 300 members come and go (never more than the member bound at once).
    for p in 0..300u64 {
        let mut bytes = [1u8; 32];
        bytes[..8].copy_from_slice(&p.to_le_bytes());
        let member = PeerId::from_bytes(bytes);
        let mut out = Vec::new();
        hand.core
            .on_wire(member, none.clone(), Bytes::new(), hand.now, &mut out);
        hand.core.on_wire(
            member,
            Wire::Decline { blob },
            Bytes::new(),
            hand.now,
            &mut out,
        );
    }
    assert_eq!(hand.core.departed(&blob), 256);
}

#[test]
fn a_rejected_piece_is_no_longer_counted_held_by_the_member_that_rejected_it() {
    let (info, tree, data) = make_blob(4 * 1024, 1024);
    let blob = info.id();
    let announce = |bits: u8| have(info, vec![bits]);
    // Rarity: node 3 holds piece 1 (busy for now), node 1 announced piece 0 and then
    // rejected it. Node 2 holds both: piece 0 is rarer (only node 2) and is asked first,
    // although the per-node order (seed 0) puts piece 1 ahead of piece 0 on a tie.
    let mut hand = Hand::new(3);
    hand.fetch(blob, &[1, 2, 3]);
    assert_eq!(asked(&hand.from(3, announce(0b10), Bytes::new()), 3), [1]);
    hand.from(3, Wire::Busy { blob, piece: 1 }, Bytes::new());
    assert_eq!(asked(&hand.from(1, announce(0b01), Bytes::new()), 1), [0]);
    hand.from(1, Wire::Reject { blob, piece: 0 }, Bytes::new());
    assert_eq!(
        asked(&hand.from(2, announce(0b11), Bytes::new()), 2),
        [0, 1]
    );

    // What a member is counted to hold decides whether a push to it is done: node 1
    // announced everything, rejected a piece, and is pushed to once this node has it all.
    let mut hand = Hand::new(2);
    hand.fetch(blob, &[1, 2]);
    let of_1 = asked(&hand.from(1, announce(0b1111), Bytes::new()), 1);
    hand.from(2, announce(0b1111), Bytes::new());
    let rejected = of_1[0];
    hand.from(
        1,
        Wire::Reject {
            blob,
            piece: rejected,
        },
        Bytes::new(),
    );
    for i in 0..4 {
        let (wire, bytes) = piece(blob, &tree, &data, i);
        hand.from(2, wire, bytes);
    }
    assert!(hand.core.progress(&blob).unwrap().is_complete());
    let mut out = Vec::new();
    hand.core.push(blob, &[id(1)], hand.now, &mut out).unwrap();
    let nothing = Wire::Got {
        blob,
        pieces: Vec::new(),
    };
    hand.core
        .on_wire(id(1), nothing, Bytes::new(), hand.now, &mut out);
    assert!(
        !out.iter().any(|o| matches!(o, Output::Pushed { .. })),
        "{out:?}"
    );
    let last = Wire::Got {
        blob,
        pieces: vec![rejected],
    };
    let mut out = Vec::new();
    hand.core
        .on_wire(id(1), last, Bytes::new(), hand.now, &mut out);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Pushed { report, .. } if report.completed == [id(1)])),
        "{out:?}"
    );
}

#[test]
fn a_second_offer_of_a_blob_does_not_replace_its_pusher() {
    let (info, _, _) = make_blob(4 * 1024, 1024);
    let blob = info.id();
    let whole = have(info, all_bits(4));
    let mut hand = Hand::new(3);
    let offer = |members: Vec<PeerId>| Wire::Offer {
        blob,
        info,
        members,
    };
    // Node 1 pushes to this node and node 2: this node's share is pieces 0 and 2.
    hand.from(1, offer(vec![id(0), id(2)]), Bytes::new());
    let mut share = asked(&hand.from(1, whole, Bytes::new()), 1);
    share.sort_unstable();
    assert_eq!(share, [0, 2]);
    // Node 3 offers it too: node 1 is still the pusher, asked for this node's share only.
    let later = hand.from(3, offer(vec![id(0)]), Bytes::new());
    assert!(asked(&later, 1).is_empty(), "{later:?}");
}

#[test]
fn a_blob_on_disk_being_fetched_serves_only_the_pieces_it_holds() {
    let (info, tree, data) = make_blob(4 * 1024, 1024);
    let blob = info.id();
    let mut hand = Hand::with(
        Limits {
            max_memory: 1024,
            max_disk: 1 << 20,
            ..limits()
        },
        2,
    );
    hand.fetch(blob, &[1]);
    let first = asked(&hand.from(1, have(info, all_bits(4)), Bytes::new()), 1);
    assert!(hand.core.is_on_disk(&blob));
    let (wire, bytes) = piece(blob, &tree, &data, first[0]);
    hand.from(1, wire, bytes);
    let mut out = Vec::new();
    let request = |piece| Wire::Request { blob, piece };
    hand.core
        .on_wire(id(2), request(first[1]), Bytes::new(), hand.now, &mut out);
    assert!(
        matches!(sends(out)[..], [(2, Wire::Reject { .. })]),
        "not held yet"
    );
    let mut out = Vec::new();
    hand.core
        .on_wire(id(2), request(first[0]), Bytes::new(), hand.now, &mut out);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::SendFromDisk { index, .. } if *index == first[0])
                || matches!(o, Output::Send { wire: Wire::Piece { piece, .. }, .. } if *piece == first[0])),
        "held (in memory until written): served; {out:?}"
    );
}

#[test]
fn a_peer_is_served_two_pipelines_unannounced_and_a_slot_expires_after_two_piece_timeouts() {
    let (info, tree, data) = make_blob(16 * 1024, 1024);
    let mut hand = Hand::with(
        Limits {
            upload_slots: 1,
            ..limits()
        },
        2,
    );
    let blob = hand.core.add(info, tree, data, &mut Vec::new()).unwrap();
    let request = |piece| Wire::Request { blob, piece };
    let served = |sent: &[(usize, Wire)]| sent.iter().any(|(_, w)| matches!(w, Wire::Piece { .. }));
    // Node 1: eight pieces (2 x pipeline 4) served and not announced, the ninth is busy.
    for i in 0..8 {
        assert!(served(&hand.from(1, request(i), Bytes::new())), "piece {i}");
    }
    let ninth = hand.from(1, request(8), Bytes::new());
    assert!(matches!(ninth[..], [(1, Wire::Busy { .. })]), "{ninth:?}");
    assert_eq!(hand.core.progress(&blob).unwrap().uploaded_bytes, 8 * 1024);
    // The only slot is node 1's: node 2 is busy until node 1's pieces are 4 s old (two
    // piece timeouts of 2 s), never announced.
    hand.now += Duration::from_millis(3999);
    let early = hand.from(2, request(0), Bytes::new());
    assert!(matches!(early[..], [(2, Wire::Busy { .. })]), "{early:?}");
    hand.now += Duration::from_millis(1);
    assert!(served(&hand.from(2, request(0), Bytes::new())));
}

#[test]
fn the_endgame_counts_the_pieces_held_and_a_member_that_timed_out_is_asked_one_at_a_time() {
    let (info, tree, data) = make_blob(8 * 1024, 1024);
    let blob = info.id();
    let whole = have(info, all_bits(8));
    let mut hand = Hand::new(2);
    hand.fetch(blob, &[1, 2]);
    let first = asked(&hand.from(1, whole.clone(), Bytes::new()), 1);
    assert_eq!(first.len(), 4);
    let mut next = Vec::new();
    for i in &first {
        let (wire, bytes) = piece(blob, &tree, &data, *i);
        next.extend(asked(&hand.from(1, wire, bytes), 1));
    }
    assert_eq!(next.len(), 4);
    // Four held, four missing (= endgame): node 2 is asked for the four in flight too.
    let mut of_2 = asked(&hand.from(2, whole, Bytes::new()), 2);
    let mut in_flight = next.clone();
    of_2.sort_unstable();
    in_flight.sort_unstable();
    assert_eq!(of_2, in_flight);
    // Node 2 answers nothing, node 1 all but one: node 2's requests time out, and it is
    // asked one piece at a time after that; node 1 is not held back.
    for i in &next[..3] {
        let (wire, bytes) = piece(blob, &tree, &data, *i);
        hand.from(1, wire, bytes);
    }
    let after = hand.advance(Duration::from_secs(2));
    assert_eq!(hand.core.progress(&blob).unwrap().timeouts, 2, "{after:?}");
    assert_eq!(asked(&after, 2).len(), 1, "{after:?}");
    // A member alone, silent: after its four requests time out it is asked one at a time.
    let mut alone = Hand::new(1);
    alone
        .core
        .fetch(blob, &[id(1)], alone.now, &mut Vec::new())
        .unwrap();
    let whole = have(info, all_bits(8));
    assert_eq!(asked(&alone.from(1, whole, Bytes::new()), 1).len(), 4);
    assert_eq!(asked(&alone.advance(Duration::from_secs(2)), 1).len(), 1);
    // A late answer of a piece held already is counted as duplicate bytes.
    let (wire, bytes) = piece(blob, &tree, &data, next[0]);
    hand.from(2, wire, bytes);
    assert_eq!(hand.core.progress(&blob).unwrap().duplicate_bytes, 1024);
}

#[test]
fn a_receiver_without_progress_opens_the_origin_after_timeout_min_and_its_deadlines_say_when() {
    // Pieces of 1 MiB: a request's timeout (4 s) is longer than `timeout_min` (2 s).
    let (info, tree, data) = make_blob(4 << 20, 1 << 20);
    let blob = info.id();
    let t0 = Instant::now();
    let mut hand = Hand::new(2);
    hand.now = t0;
    let offer = Wire::Offer {
        blob,
        info,
        members: vec![id(0), id(2)],
    };
    hand.from(1, offer, Bytes::new());
    let whole = have(info, all_bits(4));
    let mut share = asked(&hand.from(1, whole, Bytes::new()), 1);
    share.sort_unstable();
    assert_eq!(share, [0, 2]);
    assert_eq!(hand.core.next_deadline(), Some(t0 + Duration::from_secs(2)));
    // Both arrive at once; node 2 (owner of 1 and 3) never sends anything.
    for i in share {
        let at = i as usize * (1 << 20);
        let wire = Wire::Piece {
            blob,
            piece: i,
            proof: tree.proof(i),
        };
        hand.from(1, wire, data.slice(at..at + (1 << 20)));
    }
    assert_eq!(hand.core.next_deadline(), Some(t0 + Duration::from_secs(2)));
    assert!(asked(&hand.advance(Duration::from_millis(1999)), 1).is_empty());
    let mut open = asked(&hand.advance(Duration::from_millis(1)), 1);
    open.sort_unstable();
    assert_eq!(
        open,
        [1, 3],
        "no progress for 2 s: the origin is asked for the rest"
    );
    let opened = t0 + Duration::from_secs(2);
    assert_eq!(
        hand.core.next_deadline(),
        Some(opened + Duration::from_secs(4))
    );
    // The origin rejects both: nothing in flight, nothing more to ask; the offer is
    // dropped if nothing comes for a minute.
    for i in open {
        hand.from(1, Wire::Reject { blob, piece: i }, Bytes::new());
    }
    assert_eq!(
        hand.core.next_deadline(),
        Some(t0 + super::core::OFFER_IDLE)
    );
    // Fetched by the application: never dropped for idling, so no deadline at all.
    hand.fetch(blob, &[]);
    assert_eq!(hand.core.next_deadline(), None);
}
