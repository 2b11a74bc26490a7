//! A consensus engine with a synchronous loop, on the blocking face: three validators in one
//! process, each a plain thread with no async code. Each proposes a value in turn, every
//! validator votes for it (its own vote comes back through `deliver_to_self`), and a value is
//! committed once a validator has seen votes from all three.
//!
//! Run: `cargo run --example sync_engine`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use peerwire::blocking::Network;
use peerwire::{Config, Keypair, PeerId, RecvTimeoutError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Message {
    Propose { height: u64, value: String },
    Vote { height: u64 },
}

const VALIDATORS: usize = 3;
const HEIGHTS: u64 = 5;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::default()
        .network_id("sync-engine-example")
        .deliver_to_self(true);
    let mut nodes = Vec::new();
    for _ in 0..VALIDATORS {
        nodes.push(Network::<Message>::start(
            config.clone(),
            Keypair::generate(),
        )?);
    }
    // Everyone dials everyone with a lower index; `connect` returns once both sides count the
    // connection, so sending right away is safe.
    for i in 0..VALIDATORS {
        for j in 0..i {
            nodes[i].0.connect(nodes[j].0.local_addr())?;
        }
    }
    let ids: Vec<PeerId> = nodes.iter().map(|(net, _)| net.local_peer_id()).collect();
    let threads: Vec<_> = nodes
        .into_iter()
        .enumerate()
        .map(|(me, (net, inbox))| {
            let ids = ids.clone();
            std::thread::spawn(move || run_validator(me, &net, &inbox, &ids))
        })
        .collect();
    for thread in threads {
        let committed = thread.join().map_err(|_| "a validator panicked")??;
        println!("committed: {committed:?}");
    }
    Ok(())
}

/// One validator's loop: propose when it is our turn, vote for every proposal, commit a height
/// when all validators voted. Returns the committed values in order.
fn run_validator(
    me: usize,
    net: &Network<Message>,
    inbox: &peerwire::Inbox<Message>,
    ids: &[PeerId],
) -> Result<Vec<String>, String> {
    let mut votes: BTreeMap<u64, BTreeSet<PeerId>> = BTreeMap::new();
    let mut values: BTreeMap<u64, String> = BTreeMap::new();
    let mut committed = Vec::new();
    let mut height = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while height < HEIGHTS {
        if height as usize % ids.len() == me && !values.contains_key(&height) {
            let value = format!("block {height} from validator {me}");
            net.broadcast(&Message::Propose { height, value })
                .map_err(|e| e.to_string())?;
        }
        // The engine's tick: wait at most 50 ms for a message, then loop.
        match inbox.recv_timeout(Duration::from_millis(50)) {
            Ok((_, Message::Propose { height: h, value })) => {
                values.insert(h, value);
                net.broadcast(&Message::Vote { height: h })
                    .map_err(|e| e.to_string())?;
            }
            Ok((from, Message::Vote { height: h })) => {
                votes.entry(h).or_default().insert(from);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Closed) => return Err("network closed".into()),
        }
        while votes.get(&height).is_some_and(|v| v.len() == ids.len()) {
            match values.get(&height) {
                Some(value) => committed.push(value.clone()),
                None => break,
            }
            height += 1;
        }
        if Instant::now() > deadline {
            return Err(format!("validator {me} stuck at height {height}"));
        }
    }
    // Leaving gracefully flushes our last votes first, so the others still get them.
    net.shutdown();
    Ok(committed)
}
