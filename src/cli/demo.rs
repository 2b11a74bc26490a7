//! `peerwire demo`: runs the send, broadcast and latency phases over a local [`Cluster`],
//! verifies that every message arrived, and prints the summary.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinSet;

use super::cluster::{Cluster, DemoMsg, Tally};
use super::report::{Latency, Phase, Summary};
use super::{DemoArgs, Error, Result};

/// How often a phase looks at the receivers' counters; also the resolution of its timing.
const POLL: Duration = Duration::from_millis(1);

/// A phase fails when no further message arrives for this long.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A ping fails when its pong takes longer than this.
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the demo; any missing, reordered or dropped message is an error.
pub(crate) async fn run(args: DemoArgs) -> Result<()> {
    let nodes = usize::from(args.nodes);
    let broadcasts = args.broadcasts.unwrap_or((args.messages / 2).max(1));
    tracing::info!(nodes, "starting the cluster");
    let mut cluster = Cluster::start(nodes, args.size).await?;
    tracing::info!("full mesh connected");
    // Filler only: its content is irrelevant, the receivers check its length.
    let payload = Bytes::from(vec![0xa5; args.size]);

    let send = send_phase(&cluster, args.messages, payload.clone()).await?;
    tracing::info!("send phase done");
    let broadcast = broadcast_phase(&cluster, broadcasts, payload).await?;
    tracing::info!("broadcast phase done");
    let latency = latency_phase(&mut cluster, args.pings).await?;
    tracing::info!("latency phase done");
    verify(&cluster, args.messages, broadcasts)?;

    let counters = cluster.counters();
    let ids = cluster.ids();
    cluster.shutdown().await?;
    tracing::info!("every node shut down");
    let summary = Summary {
        ids,
        send,
        messages_per_node: args.messages,
        broadcast,
        broadcasts,
        latency,
        counters,
    };
    print!("{}", summary.render());
    Ok(())
}

/// Every node sends `messages` to the next node (the last to node 0), all at once.
async fn send_phase(cluster: &Cluster, messages: u64, payload: Bytes) -> Result<Phase> {
    let ids = cluster.ids();
    let expected = messages * ids.len() as u64;
    let bar = progress_bar("send", expected)?;
    let start = Instant::now();
    let mut senders = JoinSet::new();
    for (index, node) in cluster.nodes.iter().enumerate() {
        let net = node.net.clone();
        let to = ids[(index + 1) % ids.len()];
        let payload = payload.clone();
        senders.spawn(async move {
            for seq in 0..messages {
                let payload = payload.clone();
                net.send(to, &DemoMsg::Send { seq, payload }).await?;
            }
            Ok::<_, Error>(())
        });
    }
    let delivered = || total(cluster, |t| &t.sends);
    await_delivery("send", expected, delivered, cluster, &bar, &mut senders).await?;
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    Ok(Phase {
        delivered: expected,
        size: payload.len(),
        elapsed,
    })
}

/// Node 0 broadcasts `count` messages to every other node.
async fn broadcast_phase(cluster: &Cluster, count: u64, payload: Bytes) -> Result<Phase> {
    let peers = cluster.nodes.len() - 1;
    let expected = count * peers as u64;
    let bar = progress_bar("broadcast", expected)?;
    let start = Instant::now();
    let mut senders = JoinSet::new();
    let net = cluster.nodes[0].net.clone();
    let size = payload.len();
    senders.spawn(async move {
        for seq in 0..count {
            let payload = payload.clone();
            let report = net.broadcast(&DemoMsg::Broadcast { seq, payload }).await?;
            if report.queued != peers {
                return Err(format!(
                    "broadcast {seq} reached {} of {peers} peers ({} disconnected)",
                    report.queued, report.disconnected
                )
                .into());
            }
        }
        Ok::<_, Error>(())
    });
    let delivered = || total(cluster, |t| &t.broadcasts);
    await_delivery(
        "broadcast",
        expected,
        delivered,
        cluster,
        &bar,
        &mut senders,
    )
    .await?;
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    Ok(Phase {
        delivered: expected,
        size,
        elapsed,
    })
}

/// Node 0 pings node 1 `count` times, one round trip at a time; node 1's receiver echoes.
async fn latency_phase(cluster: &mut Cluster, count: u64) -> Result<Latency> {
    let net = &cluster.nodes[0].net;
    let to = cluster.nodes[1].net.local_peer_id();
    let expected = usize::try_from(count).unwrap_or(usize::MAX);
    let mut samples = Vec::with_capacity(expected.min(1 << 20));
    for n in 0..count {
        let start = Instant::now();
        net.send(to, &DemoMsg::Ping(n)).await?;
        let pong = tokio::time::timeout(PING_TIMEOUT, cluster.pongs.recv())
            .await
            .map_err(|_| format!("latency phase: no pong for ping {n} within 10 s"))?
            .ok_or("latency phase: node 0's receiver stopped")?;
        if pong != n {
            return Err(format!("latency phase: sent ping {n}, got pong {pong}").into());
        }
        samples.push(start.elapsed());
    }
    Latency::from_samples(samples).ok_or_else(|| "latency phase: no round trips".into())
}

/// Checks each node's tally: exactly the expected messages, in order, of the right size.
fn verify(cluster: &Cluster, messages: u64, broadcasts: u64) -> Result<()> {
    let mut problems = Vec::new();
    for (index, node) in cluster.nodes.iter().enumerate() {
        let tally = &node.tally;
        let sends = tally.sends.load(Relaxed);
        if sends != messages {
            problems.push(format!(
                "node {index} received {sends} of {messages} point-to-point messages"
            ));
        }
        let expected = if index == 0 { 0 } else { broadcasts };
        let got = tally.broadcasts.load(Relaxed);
        if got != expected {
            problems.push(format!(
                "node {index} received {got} of {expected} broadcasts"
            ));
        }
        let out_of_order = tally.out_of_order.load(Relaxed);
        if out_of_order != 0 {
            problems.push(format!(
                "node {index} saw {out_of_order} messages out of order"
            ));
        }
        let wrong_size = tally.wrong_size.load(Relaxed);
        if wrong_size != 0 {
            problems.push(format!(
                "node {index} saw {wrong_size} payloads of the wrong size"
            ));
        }
    }
    let dropped = cluster.dropped();
    if dropped != 0 {
        problems.push(format!("{dropped} messages were dropped"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("verification failed: {}", problems.join("; ")).into())
    }
}

/// Waits until the receivers count `expected` deliveries, failing early if a sender fails, a
/// message is dropped, or delivery stalls.
async fn await_delivery(
    phase: &str,
    expected: u64,
    delivered: impl Fn() -> u64,
    cluster: &Cluster,
    bar: &ProgressBar,
    senders: &mut JoinSet<Result<()>>,
) -> Result<()> {
    let mut progress = (0, Instant::now());
    loop {
        let now = delivered();
        bar.set_position(now);
        if now >= expected {
            break;
        }
        while let Some(joined) = senders.try_join_next() {
            joined?.map_err(|e| format!("{phase} phase: {e}"))?;
        }
        // A dropped message would never arrive: say so now instead of after the stall timeout.
        let dropped = cluster.dropped();
        if dropped != 0 {
            return Err(format!(
                "{phase} phase: {dropped} messages dropped ({now} of {expected} delivered)"
            )
            .into());
        }
        if now > progress.0 {
            progress = (now, Instant::now());
        } else if progress.1.elapsed() > STALL_TIMEOUT {
            return Err(format!(
                "{phase} phase: {now} of {expected} messages delivered, then nothing for 10 s"
            )
            .into());
        }
        tokio::time::sleep(POLL).await;
    }
    while let Some(joined) = senders.join_next().await {
        joined?.map_err(|e| format!("{phase} phase: {e}"))?;
    }
    Ok(())
}

fn total(cluster: &Cluster, counter: impl Fn(&Tally) -> &std::sync::atomic::AtomicU64) -> u64 {
    cluster
        .nodes
        .iter()
        .map(|node| counter(&node.tally).load(Relaxed))
        .sum()
}

/// A bar on stderr; indicatif hides it when stderr is not a terminal.
fn progress_bar(phase: &'static str, len: u64) -> Result<ProgressBar> {
    let style = ProgressStyle::with_template(
        "{prefix:>9} [{bar:40}] {human_pos}/{human_len} msgs, {per_sec}, eta {eta}",
    )?
    .progress_chars("=> ");
    Ok(ProgressBar::new(len).with_style(style).with_prefix(phase))
}
