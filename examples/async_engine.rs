//! A consensus engine on the async face: three validators in one tokio runtime exchange votes
//! on a critical channel and blocks as raw bytes on a bulk channel, each seeing its own
//! messages through `deliver_to_self`. A block is committed once all three validators voted
//! for it.
//!
//! Run: `cargo run --example async_engine`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use peerwire::{ChannelSpec, Config, Keypair, Network, PeerId};
use serde::{Deserialize, Serialize};

/// Votes go on a channel of their own, so a large block never delays one.
const VOTES: u16 = 1;
/// Blocks travel as bytes the engine already encoded: no re-encoding, no copy.
const BLOCKS: u16 = 2;
const VALIDATORS: usize = 3;
const HEIGHTS: u64 = 4;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Vote {
    height: u64,
    block_len: usize,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::default()
        .network_id("async-engine-example")
        .channel(VOTES, ChannelSpec::critical().deliver_to_self(true))
        .channel(BLOCKS, ChannelSpec::bulk().deliver_to_self(true));
    let mut nodes = Vec::new();
    for _ in 0..VALIDATORS {
        let (net, default_inbox) =
            Network::<Vec<u8>>::start(config.clone(), Keypair::generate()).await?;
        nodes.push((net, default_inbox));
    }
    for i in 0..VALIDATORS {
        for j in 0..i {
            nodes[i].0.connect(nodes[j].0.local_addr()).await?;
        }
    }
    let mut tasks = Vec::new();
    for (me, (net, default_inbox)) in nodes.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let outcome = run_validator(me, &net).await;
            drop(default_inbox);
            net.shutdown().await;
            outcome
        }));
    }
    for task in tasks {
        let committed = task.await??;
        println!("committed heights: {committed:?}");
    }
    Ok(())
}

async fn run_validator(me: usize, net: &Network<Vec<u8>>) -> Result<Vec<u64>, String> {
    let (votes_tx, votes_rx) = net.channel::<Vote>(VOTES).map_err(|e| e.to_string())?;
    let (blocks_tx, blocks_rx) = net.channel::<Bytes>(BLOCKS).map_err(|e| e.to_string())?;
    let mut tally: BTreeMap<u64, BTreeSet<PeerId>> = BTreeMap::new();
    let mut committed = Vec::new();
    for height in 0..HEIGHTS {
        if height as usize % VALIDATORS == me {
            // The proposer sends the block (already encoded by the engine) to everyone.
            let block = Bytes::from(vec![height as u8; 256 * 1024]);
            blocks_tx
                .broadcast(&block)
                .await
                .map_err(|e| e.to_string())?;
        }
        let work = async {
            let (_, block) = blocks_rx.recv().await.ok_or("network closed")?;
            let vote = Vote {
                height,
                block_len: block.len(),
            };
            votes_tx.broadcast(&vote).await.map_err(|e| e.to_string())?;
            while tally.get(&height).is_none_or(|v| v.len() < VALIDATORS) {
                let (from, vote) = votes_rx.recv().await.ok_or("network closed")?;
                tally.entry(vote.height).or_default().insert(from);
            }
            Ok::<(), String>(())
        };
        tokio::time::timeout(Duration::from_secs(30), work)
            .await
            .map_err(|_| format!("validator {me} stuck at height {height}"))??;
        committed.push(height);
    }
    Ok(committed)
}
