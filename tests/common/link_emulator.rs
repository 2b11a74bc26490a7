//! A userspace stand-in for `tc netem delay D loss P%`, for kernels built without netem.
//!
//! Each node gets a TUN device as its network interface, so every IPv4 packet a node sends
//! reaches this process instead of a wire. One thread per device reads the packets, drops a
//! random share of them (the loss), and hands the rest to the delay thread of the node owning
//! its destination address, which writes each one into that node's TUN device once the delay
//! has passed.
//! Every packet crosses the emulator exactly once, as it would cross one netem qdisc on the
//! sender's interface: one-way delay `D`, round trip `2D`, independent loss `P` per packet.
//! The delay is the same for every packet, so packets keep their order, as with netem.
//! A node can be cut off ([`LinkEmulator::set_cut`]): every packet to or from it is dropped,
//! also those already waiting out their delay, as if a cable somewhere had been pulled; the
//! node itself sees no local error.
//!
//! The devices are created in the caller's namespace, down and without addresses; the caller
//! moves each into its node's namespace before configuring it. When a namespace is deleted its
//! device goes with it, the blocked read of that device fails and its thread ends; the delay
//! threads end when every reader has.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tappers::{Interface, Tun};

/// What the emulator did with the packets it read, for the test's notes.
#[derive(Default)]
pub(crate) struct LinkCounters {
    /// Written into the destination node's device after the delay.
    pub(crate) delivered: AtomicU64,
    /// Dropped at random: the emulated loss.
    pub(crate) lost: AtomicU64,
    /// Not IPv4 to an address of the emulated subnet (IPv6 router solicitations, say): dropped.
    pub(crate) unroutable: AtomicU64,
    /// The destination device refused the write (down, or being deleted).
    pub(crate) refused: AtomicU64,
    /// To or from a node that was cut off.
    pub(crate) cut: AtomicU64,
    /// The most a packet was written after its due time (microseconds): how far behind a
    /// starved emulator ran, which a failure report needs to tell a starved lab from a fault.
    pub(crate) max_late_micros: AtomicU64,
    /// Threads that stopped, and why (a reader stops when its device goes with its namespace;
    /// any other end while the test runs would cut that node off).
    pub(crate) ended: std::sync::Mutex<Vec<String>>,
}

impl LinkCounters {
    pub(crate) fn summary(&self) -> String {
        let ended = self.ended.lock().map(|e| e.join("; ")).unwrap_or_default();
        format!(
            "{} packets delivered, {} lost at random, {} not routable, {} refused, {} cut off; \
             at most {:.1} ms late; threads ended: {}",
            self.delivered.load(Ordering::Relaxed),
            self.lost.load(Ordering::Relaxed),
            self.unroutable.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.cut.load(Ordering::Relaxed),
            self.max_late_micros.load(Ordering::Relaxed) as f64 / 1000.0,
            if ended.is_empty() { "none" } else { &ended },
        )
    }

    fn ended(&self, what: String) {
        if let Ok(mut ended) = self.ended.lock() {
            ended.push(what);
        }
    }
}

/// A running emulator; its threads live as long as the devices do.
pub(crate) struct LinkEmulator {
    pub(crate) counters: Arc<LinkCounters>,
    /// Per node: whether it is cut off.
    cut: Arc<Vec<AtomicBool>>,
}

/// A packet waiting out its delay.
struct Delayed {
    due: Instant,
    from: usize,
    to: usize,
    packet: Vec<u8>,
}

impl LinkEmulator {
    /// Creates one TUN device per name; node `i` (device `names[i]`) owns the IPv4 addresses
    /// `addrs[i]`. `loss_percent` of the packets are dropped, the rest delayed by `delay`.
    pub(crate) fn start(
        names: &[String],
        addrs: &[Vec<[u8; 4]>],
        delay: Duration,
        loss_percent: u32,
    ) -> io::Result<Self> {
        let owners: Arc<std::collections::HashMap<[u8; 4], usize>> = Arc::new(
            addrs
                .iter()
                .enumerate()
                .flat_map(|(i, list)| list.iter().map(move |a| (*a, i)))
                .collect(),
        );
        let mut devices = Vec::with_capacity(names.len());
        for name in names {
            devices.push(Arc::new(Tun::new_named(Interface::new(name)?)?));
        }
        let counters = Arc::new(LinkCounters::default());
        let cut: Arc<Vec<AtomicBool>> =
            Arc::new(names.iter().map(|_| AtomicBool::new(false)).collect());
        // One delay thread per destination device: a write into a TUN device runs the
        // receiving node's network stack in the writing thread, so one thread for all of
        // them would serialize every node's receive path (a burst to one node would hold up
        // the packets due to all the others; with one thread the eight-publisher gossip test
        // measured it up to 59 ms late).
        let mut to_delay = Vec::with_capacity(devices.len());
        let mut delayed = Vec::with_capacity(devices.len());
        for _ in &devices {
            let (tx, rx) = mpsc::channel::<Delayed>();
            to_delay.push(tx);
            delayed.push(rx);
        }
        let to_delay = Arc::new(to_delay);
        // Drop a packet when a uniformly random u32 falls below this.
        let loss_below = u64::from(loss_percent.min(100)) * (1u64 << 32) / 100;
        for (from, device) in devices.iter().enumerate() {
            let device = Arc::clone(device);
            let to_delay = Arc::clone(&to_delay);
            let counters = Arc::clone(&counters);
            let cut = Arc::clone(&cut);
            let owners = Arc::clone(&owners);
            let mut random = SplitMix64::seeded(from as u64);
            thread::Builder::new()
                .name(format!("link-emu-read-{from}"))
                .spawn(move || {
                    let mut buf = vec![0u8; 65_536];
                    loop {
                        let len = match device.recv(&mut buf) {
                            Ok(len) => len,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            // The device disappeared with its namespace.
                            Err(e) => {
                                counters.ended(format!("reader {from}: {e}"));
                                return;
                            }
                        };
                        let packet = &buf[..len];
                        let Some(to) = destination(packet, &owners) else {
                            counters.unroutable.fetch_add(1, Ordering::Relaxed);
                            continue;
                        };
                        if cut[from].load(Ordering::Relaxed) || cut[to].load(Ordering::Relaxed) {
                            counters.cut.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        if (random.next() >> 32) < loss_below {
                            counters.lost.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        let due = Instant::now() + delay;
                        let packet = Delayed {
                            due,
                            from,
                            to,
                            packet: packet.to_vec(),
                        };
                        if to_delay[to].send(packet).is_err() {
                            return;
                        }
                    }
                })?;
        }
        // The delay threads end once every reader has (the last sender goes with them).
        drop(to_delay);
        for (to, (device, delayed)) in devices.into_iter().zip(delayed).enumerate() {
            let counters_out = Arc::clone(&counters);
            let cut_out = Arc::clone(&cut);
            thread::Builder::new()
                .name(format!("link-emu-delay-{to}"))
                .spawn(move || {
                    // Same delay for all, so the channel's order is the order they fall due.
                    for Delayed {
                        due,
                        from,
                        to,
                        packet,
                    } in delayed
                    {
                        let now = Instant::now();
                        if due > now {
                            thread::sleep(due - now);
                        } else {
                            let late = u64::try_from((now - due).as_micros()).unwrap_or(u64::MAX);
                            counters_out
                                .max_late_micros
                                .fetch_max(late, Ordering::Relaxed);
                        }
                        // A cut also loses what was on the wire.
                        if cut_out[from].load(Ordering::Relaxed)
                            || cut_out[to].load(Ordering::Relaxed)
                        {
                            counters_out.cut.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        match device.send(&packet) {
                            Ok(_) => counters_out.delivered.fetch_add(1, Ordering::Relaxed),
                            Err(_) => counters_out.refused.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })?;
        }
        Ok(Self { counters, cut })
    }

    /// Cuts node `node` off (every packet to or from it dropped), or reconnects it.
    pub(crate) fn set_cut(&self, node: usize, cut: bool) {
        self.cut[node].store(cut, Ordering::Relaxed);
    }
}

/// The node owning the IPv4 destination of `packet`, if any does.
fn destination(packet: &[u8], owners: &std::collections::HashMap<[u8; 4], usize>) -> Option<usize> {
    let version = packet.first()? >> 4;
    let dst: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
    if version != 4 {
        return None;
    }
    owners.get(&dst).copied()
}

/// A small seeded generator: loss needs to be random, not cryptographic.
struct SplitMix64(u64);

impl SplitMix64 {
    fn seeded(stream: u64) -> Self {
        let clock = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self(clock ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(std::process::id()))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
