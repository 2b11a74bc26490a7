//! The demo's summary: throughput and latency arithmetic and the text printed on stdout.

use std::time::Duration;

use peerwire::PeerId;

use super::cluster::NodeCounters;

/// The measured outcome of one traffic phase.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Phase {
    /// Messages delivered to receivers (a broadcast to k peers counts k times).
    pub(crate) delivered: u64,
    /// Payload bytes per message.
    pub(crate) size: usize,
    /// From the first send to the last delivery.
    pub(crate) elapsed: Duration,
}

impl Phase {
    /// Delivered messages per second.
    pub(crate) fn messages_per_sec(&self) -> f64 {
        self.delivered as f64 / self.seconds()
    }

    /// Delivered payload in MiB per second.
    pub(crate) fn mib_per_sec(&self) -> f64 {
        self.delivered as f64 * self.size as f64 / (1024.0 * 1024.0) / self.seconds()
    }

    fn seconds(&self) -> f64 {
        // A phase too short for the clock still gets a finite rate.
        self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Round-trip time statistics.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Latency {
    /// Round trips measured.
    pub(crate) samples: usize,
    /// Median.
    pub(crate) p50: Duration,
    /// 99th percentile.
    pub(crate) p99: Duration,
    /// Slowest.
    pub(crate) max: Duration,
}

impl Latency {
    /// Summarises round-trip samples; `None` when there are none.
    pub(crate) fn from_samples(mut samples: Vec<Duration>) -> Option<Self> {
        samples.sort_unstable();
        Some(Self {
            samples: samples.len(),
            p50: percentile(&samples, 50)?,
            p99: percentile(&samples, 99)?,
            max: *samples.last()?,
        })
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], pct: usize) -> Option<Duration> {
    let rank = (sorted.len() * pct).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

/// Everything the summary shows.
#[derive(Debug)]
pub(crate) struct Summary {
    /// Node ids in start order.
    pub(crate) ids: Vec<PeerId>,
    /// The point-to-point phase.
    pub(crate) send: Phase,
    /// Messages each node sent in the point-to-point phase.
    pub(crate) messages_per_node: u64,
    /// The broadcast phase.
    pub(crate) broadcast: Phase,
    /// Messages node 0 broadcast.
    pub(crate) broadcasts: u64,
    /// The latency phase.
    pub(crate) latency: Latency,
    /// Per-node counters sampled before shutdown.
    pub(crate) counters: Vec<NodeCounters>,
}

impl Summary {
    /// The text for stdout.
    pub(crate) fn render(&self) -> String {
        let n = self.ids.len();
        let mut out = String::new();
        let mut line = |text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        let links = n * (n - 1) / 2;
        line(format!(
            "peerwire demo: {n} nodes on 127.0.0.1, full mesh of {links} encrypted connection{}",
            if links == 1 { "" } else { "s" }
        ));
        line(format!(
            "send:      {:>9} messages of {} B delivered in {:.2} s: {:.0} msgs/s, {:.1} MiB/s \
             ({} per node to the next, in order)",
            self.send.delivered,
            self.send.size,
            self.send.elapsed.as_secs_f64(),
            self.send.messages_per_sec(),
            self.send.mib_per_sec(),
            self.messages_per_node,
        ));
        line(format!(
            "broadcast: {:>9} messages of {} B delivered in {:.2} s: {:.0} msgs/s, {:.1} MiB/s \
             ({} from node 0 to {} peers, in order)",
            self.broadcast.delivered,
            self.broadcast.size,
            self.broadcast.elapsed.as_secs_f64(),
            self.broadcast.messages_per_sec(),
            self.broadcast.mib_per_sec(),
            self.broadcasts,
            n - 1,
        ));
        line(format!(
            "latency:   {:>9} round trips node 0 -> node 1: rtt p50 {} us, p99 {} us, max {} us",
            self.latency.samples,
            self.latency.p50.as_micros(),
            self.latency.p99.as_micros(),
            self.latency.max.as_micros(),
        ));
        line(String::new());
        line(format!(
            "{:<5} {:<12} {:>10} {:>10} {:>10} {:>10} {:>8}",
            "node", "peer id", "msgs in", "msgs out", "MiB in", "MiB out", "dropped"
        ));
        for (index, (id, c)) in self.ids.iter().zip(&self.counters).enumerate() {
            let mut short = id.to_string();
            short.truncate(10);
            line(format!(
                "{:<5} {:<12} {:>10} {:>10} {:>10.1} {:>10.1} {:>8}",
                index,
                format!("{short}.."),
                c.messages_in,
                c.messages_out,
                mib(c.bytes_in),
                mib(c.bytes_out),
                c.dropped,
            ));
        }
        line(String::new());
        let total =
            self.send.delivered + self.broadcast.delivered + 2 * self.latency.samples as u64;
        line(format!(
            "ok: all {total} messages delivered, none dropped; every node shut down and its inbox \
             closed"
        ));
        out
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<_> = (1..=100).map(Duration::from_micros).collect();
        let latency = Latency::from_samples(samples).unwrap();
        assert_eq!(latency.p50, Duration::from_micros(50));
        assert_eq!(latency.p99, Duration::from_micros(99));
        assert_eq!(latency.max, Duration::from_micros(100));
        let one = Latency::from_samples(vec![Duration::from_micros(7)]).unwrap();
        assert_eq!((one.p50, one.p99), (Duration::from_micros(7), one.p50));
        assert!(Latency::from_samples(Vec::new()).is_none());
    }
}
