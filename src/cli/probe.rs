//! `peerwire probe`: measures how channels share a real link. One side (`--listen`) receives and
//! reports; the other (`--connect`) keeps a bulk channel saturated with large messages while it
//! sends small critical messages at a fixed interval (or floods them with `--flood`). The
//! receiver prints one line: critical one-way latency percentiles (both ends read the same
//! wall clock, so run them on one host) and each channel's throughput.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use peerwire::protocols::rpc::RpcConfig;
use peerwire::{ChannelSpec, Config, Keypair, Network, NetworkEvent, SendError};
use serde::{Deserialize, Serialize};

use super::{ProbeArgs, Result};

const CRITICAL: u16 = 1;
const BULK: u16 = 2;
/// The request protocol's channel (`--requests`), as urgent as the critical one.
const RPC: u16 = 3;
/// Pause before retrying a send refused because the link is saturated.
const RETRY: std::time::Duration = std::time::Duration::from_millis(1);

/// A critical probe message: when it was sent, and padding to the requested size.
#[derive(Debug, Serialize, Deserialize)]
struct Beat {
    seq: u64,
    sent_unix_micros: u64,
    /// The last beat: the receiver reports and exits.
    last: bool,
    pad: Bytes,
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn config(args: &ProbeArgs) -> Config {
    let mut config = Config::default();
    if let Some(lowat) = args.notsent_lowat {
        config.tcp_notsent_lowat = lowat;
    }
    config
        .network_id(args.network_id.clone())
        .channel(CRITICAL, ChannelSpec::critical())
        .channel(RPC, ChannelSpec::critical())
        .channel(
            BULK,
            ChannelSpec::bulk()
                .max_message_size(args.bulk_size.max(1) + 64)
                .send_queue_bytes((4 * args.bulk_size).max(1 << 20)),
        )
}

/// Runs one side of the probe.
pub(crate) async fn run(args: ProbeArgs) -> Result<()> {
    match (args.listen, args.connect) {
        (Some(_), None) => receive(args).await,
        (None, Some(_)) => send(args).await,
        _ => Err(
            "probe: give exactly one of --listen ADDR (receiver) or --connect ADDR (sender)".into(),
        ),
    }
}

async fn receive(args: ProbeArgs) -> Result<()> {
    let mut config = config(&args);
    if let Some(listen) = args.listen {
        config = config.listen(listen);
    }
    let (net, _inbox) = Network::<Bytes>::start(config, Keypair::try_generate()?).await?;
    let (_, beats) = net.channel::<Beat>(CRITICAL)?;
    let (_, parts) = net.channel::<Bytes>(BULK)?;
    // Answers every request with as many bytes as it carried.
    let (_rpc_client, mut rpc) = net.rpc::<Bytes, Bytes>(RpcConfig::new(RPC))?;
    let echo = tokio::spawn(async move {
        while let Some(request) = rpc.recv().await {
            let answer = request.body().clone();
            if let Err(e) = request.respond(&answer) {
                tracing::warn!("probe: answer not sent: {e}");
            }
        }
    });
    println!("probe listening on {}", net.local_addr());
    let mut latencies = Vec::new();
    let (mut critical_bytes, mut bulk_bytes) = (0u64, 0u64);
    let mut started = None;
    loop {
        tokio::select! {
            beat = beats.recv() => {
                let Some((_, beat)) = beat else { break };
                let since = *started.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= args.warmup {
                    latencies.push(unix_micros().saturating_sub(beat.sent_unix_micros));
                }
                critical_bytes += beat.pad.len() as u64 + 24;
                if beat.last {
                    break;
                }
            }
            part = parts.recv() => {
                let Some((_, part)) = part else { break };
                started.get_or_insert_with(std::time::Instant::now);
                bulk_bytes += part.len() as u64;
            }
        }
    }
    let elapsed = started.map_or(1.0, |s| s.elapsed().as_secs_f64().max(1e-6));
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() - 1) as f64 * p).round() as usize;
        latencies[i] as f64 / 1000.0
    };
    let mbit = |bytes: u64| bytes as f64 * 8.0 / elapsed / 1e6;
    println!(
        "probe report: critical_messages={} critical_p50_ms={:.2} critical_p99_ms={:.2} \
         critical_max_ms={:.2} critical_mbit_s={:.2} bulk_mbit_s={:.2} seconds={:.2}",
        latencies.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0),
        mbit(critical_bytes),
        mbit(bulk_bytes),
        elapsed
    );
    net.shutdown().await;
    echo.abort();
    Ok(())
}

/// Percentile `p` of sorted microseconds, in milliseconds.
fn percentile_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// `--requests N`: N requests one after another; prints their round-trip percentiles.
async fn requests(net: &Network<Bytes>, peer: peerwire::PeerId, n: u64, size: usize) -> Result<()> {
    let (client, _server) = net.rpc::<Bytes, Bytes>(RpcConfig::new(RPC))?;
    let body = Bytes::from(vec![1u8; size]);
    let mut rtts = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for _ in 0..n {
        let start = std::time::Instant::now();
        let answer = client.request(peer, &body).await?;
        if answer.len() != size {
            return Err(format!("probe: answer of {} bytes, expected {size}", answer.len()).into());
        }
        rtts.push(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX));
    }
    rtts.sort_unstable();
    println!(
        "probe rpc report: requests={} rpc_p50_ms={:.2} rpc_p99_ms={:.2} rpc_max_ms={:.2}",
        rtts.len(),
        percentile_ms(&rtts, 0.5),
        percentile_ms(&rtts, 0.99),
        percentile_ms(&rtts, 1.0)
    );
    Ok(())
}

async fn send(args: ProbeArgs) -> Result<()> {
    let (net, _inbox) = Network::<Bytes>::start(config(&args), Keypair::try_generate()?).await?;
    let (beats, _) = net.channel::<Beat>(CRITICAL)?;
    let (parts, _) = net.channel::<Bytes>(BULK)?;
    let target = args.connect.ok_or("probe: --connect is required")?;
    let peer = net.connect(target).await?;
    let mut events = net.events();
    let until = tokio::time::Instant::now() + args.duration;
    let bulk = {
        let parts = parts.clone();
        let payload = parts.encode(&Bytes::from(vec![7u8; args.bulk_size]));
        tokio::spawn(async move {
            let Ok(payload) = payload else { return };
            if args.bulk_size == 0 {
                return;
            }
            while tokio::time::Instant::now() < until {
                match parts.send_encoded(peer, &payload).await {
                    Ok(()) => {}
                    // A full queue is expected (the link is the bottleneck): try again soon,
                    // without spinning on a lane that refuses at once.
                    Err(SendError::Full(_)) => tokio::time::sleep(RETRY).await,
                    Err(_) => return,
                }
            }
        })
    };
    let pad = Bytes::from(vec![1u8; args.critical_size.saturating_sub(24)]);
    let mut ticker = tokio::time::interval(args.critical_interval);
    let mut seq = 0u64;
    if let Some(n) = args.requests {
        // On the sender, the warm-up delays the requests past TCP's start-up.
        tokio::time::sleep(args.warmup).await;
        requests(&net, peer, n, args.critical_size).await?;
    }
    while args.requests.is_none() && tokio::time::Instant::now() < until {
        if !args.flood {
            ticker.tick().await;
        }
        let beat = Beat {
            seq,
            sent_unix_micros: unix_micros(),
            last: false,
            pad: pad.clone(),
        };
        match beats.send(peer, &beat).await {
            Ok(()) => {}
            Err(SendError::Full(_)) => tokio::time::sleep(RETRY).await,
            Err(e) => return Err(e.into()),
        }
        seq += 1;
        if let Ok(NetworkEvent::Disconnected { reason, .. }) = events.try_recv() {
            return Err(format!("probe: the receiver disconnected: {reason}").into());
        }
    }
    let _ = bulk.await;
    let last = Beat {
        seq,
        sent_unix_micros: unix_micros(),
        last: true,
        pad: Bytes::new(),
    };
    beats.send(peer, &last).await?;
    net.shutdown().await;
    Ok(())
}
