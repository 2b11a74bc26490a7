//! Address-book poisoning over real connections: an attacker holding a whole /24 (200 nodes,
//! one per address) connects to a victim and answers every exchange with 1,000 validly signed
//! records at addresses all over the address space. The victim, whose outbound slots are held
//! by honest peers, ends with at most 10 of them in its book and none among its outbound
//! connections. Run twice: on loopback's 127.66.0.0/24, and with the attacker, the victim and
//! the honest peers each in a network namespace of their own (root only; skipped elsewhere
//! unless `PEERWIRE_REQUIRE_CHAOS` is set). The pure form, with the book alone, is in
//! `peers/book_tests.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;

use super::task::{Ask, Peers};
use super::{Discovery, DiscoveryConfig};
use crate::identity::PeerId;
use crate::peers::record::PeerRecord;
use crate::session::Direction;
use crate::{ChannelSpec, Config, Keypair, Network};

const PEX: u16 = 30;
const ATTACKERS: u8 = 200;
const HONEST: u8 = 8;

fn config(ip: [u8; 4]) -> Config {
    Config::default()
        .listen(SocketAddr::from((ip, 0)))
        .dial_from(ip.into())
        .network_id("poison")
        .channel(PEX, ChannelSpec::high())
        .shutdown_timeout(Duration::from_secs(1))
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Honest peers, peer `k` at `ip(k)` (each in a /16 of its own), running discovery.
async fn honest_peers(ip: impl Fn(u8) -> [u8; 4]) -> Vec<(Network<Bytes>, Discovery)> {
    let mut honest = Vec::new();
    for k in 0..HONEST {
        let (net, _) = Network::<Bytes>::start(config(ip(k)), Keypair::generate())
            .await
            .unwrap();
        let discovery = net.discovery(PEX).unwrap();
        honest.push((net, discovery));
    }
    honest
}

/// The victim at `ip`, room for every attacker, its outbound slots dialed to `honest`.
async fn victim(ip: [u8; 4], honest: &[(SocketAddr, PeerId)]) -> (Network<Bytes>, Discovery) {
    let mut victim_config = config(ip);
    victim_config.max_inbound = 256;
    let (victim, _inbox) = Network::<Bytes>::start(victim_config, Keypair::generate())
        .await
        .unwrap();
    let discovery = victim.discovery(DiscoveryConfig::new(PEX)).unwrap();
    for (addr, id) in honest {
        victim.connect_to(*addr, *id).await.unwrap();
    }
    (victim, discovery)
}

/// 1,000 records, properly signed by throwaway keys, at addresses in 1,000 /24s.
fn forged_records() -> Arc<Vec<PeerRecord>> {
    Arc::new(
        (0..1000u32)
            .map(|i| {
                let addr = SocketAddr::from(([100, (i / 250) as u8, (i % 250) as u8, 1], 7000));
                PeerRecord::sign(&Keypair::generate(), vec![addr], 1, None, None).unwrap()
            })
            .collect(),
    )
}

/// The attackers, one at each `ip(host)` for host 1..=200, each answering every exchange with
/// `forged` (counted in `asked`) and connected to the victim at `target`.
async fn attackers(
    ip: impl Fn(u8) -> [u8; 4],
    target: SocketAddr,
    asked: &Arc<AtomicUsize>,
) -> Vec<Network<Bytes>> {
    let forged = forged_records();
    let mut attackers = Vec::new();
    for host in 1..=ATTACKERS {
        let (net, _) = Network::<Bytes>::start(config(ip(host)), Keypair::generate())
            .await
            .unwrap();
        let (_client, mut server) = net.rpc::<Ask, Peers>(PEX).unwrap();
        let (forged, asked) = (forged.clone(), asked.clone());
        tokio::spawn(async move {
            while let Some(request) = server.recv().await {
                asked.fetch_add(1, Ordering::Relaxed);
                let _ = request.respond(&Peers {
                    records: forged.as_ref().clone(),
                });
            }
        });
        // Inbound to the victim, which has room for all of them: the strongest attack.
        net.connect(target).await.unwrap();
        attackers.push(net);
    }
    attackers
}

/// Once every attacker is in: waits until each was asked, lets the victim's ticks pass, and
/// judges its book and its outbound connections.
async fn judge(
    victim: &Network<Bytes>,
    discovery: &Discovery,
    honest_ids: &[PeerId],
    asked: &AtomicUsize,
) {
    let attackers_in = victim
        .peers()
        .iter()
        .filter(|p| p.peer.is_some_and(|id| !honest_ids.contains(&id)))
        .count();
    assert_eq!(
        attackers_in,
        usize::from(ATTACKERS),
        "every attacker got in"
    );
    // The victim asks each new neighbour once: wait until every connected attacker answered.
    eventually("every attacker asked", || {
        asked.load(Ordering::Relaxed) >= attackers_in
    })
    .await;
    // Let the victim's ticks pass (asking again, dialing from its book).
    tokio::time::sleep(Duration::from_secs(3)).await;

    let known = discovery.known();
    let poisoned = known
        .iter()
        .filter(|(id, _)| !honest_ids.contains(id))
        .count();
    assert!(
        poisoned <= 10,
        "{poisoned} attacker entries in the book of {} (from {attackers_in} attackers)",
        known.len()
    );
    for info in victim.peers() {
        if info.direction == Direction::Outbound {
            let id = info.peer.unwrap();
            assert!(
                honest_ids.contains(&id),
                "an outbound slot went to {id} at {}",
                info.addr
            );
        }
    }
    let outbound = victim
        .peers()
        .iter()
        .filter(|p| p.direction == Direction::Outbound)
        .count();
    assert_eq!(outbound, usize::from(HONEST), "honest outbound peers kept");
}

fn ids(honest: &[(Network<Bytes>, Discovery)]) -> Vec<(SocketAddr, PeerId)> {
    honest
        .iter()
        .map(|(n, _)| (n.local_addr(), n.local_peer_id()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoning_slash_24_gets_at_most_10_entries_and_no_outbound_slot() {
    let honest = honest_peers(|k| [127, 10 + k, 0, 1]).await;
    let honest_ids: Vec<_> = ids(&honest).into_iter().map(|(_, id)| id).collect();
    let (victim, discovery) = victim([127, 0, 0, 1], &ids(&honest)).await;
    let asked = Arc::new(AtomicUsize::new(0));
    let _attackers = attackers(|host| [127, 66, 0, host], victim.local_addr(), &asked).await;
    judge(&victim, &discovery, &honest_ids, &asked).await;
    victim.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// The same attack across network namespaces

/// Three namespaces joined through the victim's (10.200.1.1, which it listens and dials from):
/// the attacker's /24 (10.66.0.1–200, behind 10.200.1.2) and the honest peers' /16s
/// (10.10–17.0.1, behind 10.201.1.2). Removed on drop.
struct Namespaces {
    victim: String,
    attacker: String,
    honest: String,
}

/// Runs `ip` with `args`; the error names the command and carries its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("`ip` cannot run ({e}); install iproute2"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Namespaces {
    /// Builds them, or says why this machine cannot.
    fn new() -> Result<Self, String> {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let root = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0");
        if !root {
            return Err("not running as root (network namespaces need it)".into());
        }
        // The chaos tests' prefix and pid, so their clean-up of killed runs covers these.
        let name = |role: &str| format!("pwchaos-{}-poison-{role}", std::process::id());
        let ns = Self {
            victim: name("v"),
            attacker: name("a"),
            honest: name("h"),
        };
        for n in [&ns.victim, &ns.attacker, &ns.honest] {
            ip(&["netns", "add", n])?;
            ip(&["-n", n, "link", "set", "lo", "up"])?;
        }
        let (v, a, h) = (&ns.victim, &ns.attacker, &ns.honest);
        ip(&[
            "-n", v, "link", "add", "va", "type", "veth", "peer", "name", "av", "netns", a,
        ])?;
        ip(&[
            "-n", v, "link", "add", "vh", "type", "veth", "peer", "name", "hv", "netns", h,
        ])?;
        for (n, dev, addr) in [
            (v, "va", "10.200.1.1/24"),
            (a, "av", "10.200.1.2/24"),
            (v, "vh", "10.201.1.1/24"),
            (h, "hv", "10.201.1.2/24"),
        ] {
            ip(&["-n", n, "addr", "add", addr, "dev", dev])?;
            ip(&["-n", n, "link", "set", dev, "up"])?;
        }
        for host in 1..=ATTACKERS {
            ip(&[
                "-n",
                a,
                "addr",
                "add",
                &format!("10.66.0.{host}/32"),
                "dev",
                "av",
            ])?;
        }
        ip(&["-n", v, "route", "add", "10.66.0.0/24", "via", "10.200.1.2"])?;
        // The victim dials from its listening address, on the attacker's side.
        ip(&[
            "-n",
            h,
            "route",
            "add",
            "10.200.1.0/24",
            "via",
            "10.201.1.1",
        ])?;
        for k in 0..HONEST {
            let honest = format!("10.{}.0.1/32", 10 + k);
            ip(&["-n", h, "addr", "add", &honest, "dev", "hv"])?;
            let net = format!("10.{}.0.0/16", 10 + k);
            ip(&["-n", v, "route", "add", &net, "via", "10.201.1.2"])?;
        }
        Ok(ns)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in [&self.victim, &self.attacker, &self.honest] {
            let _ = ip(&["netns", "del", n]);
        }
    }
}

/// Runs `work` on a thread of its own moved into namespace `ns`, on a single-threaded runtime
/// (every socket it opens is made on that thread, so in that namespace).
fn in_namespace<T: Send + 'static>(
    ns: &str,
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("namespace file");
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&file),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(work)
    })
}

#[test]
fn a_poisoning_slash_24_in_a_namespace_of_its_own_gets_at_most_10_entries_and_no_outbound_slot() {
    let ns = match Namespaces::new() {
        Ok(ns) => ns,
        Err(why) => {
            assert!(
                std::env::var_os("PEERWIRE_REQUIRE_CHAOS").is_none(),
                "PEERWIRE_REQUIRE_CHAOS is set but this test cannot run here: {why}"
            );
            eprintln!("skipped: {why}");
            return;
        }
    };
    let wait = Duration::from_secs(60);
    let (stop_honest, stopped_honest) = tokio::sync::oneshot::channel::<()>();
    let (stop_attack, stopped_attack) = tokio::sync::oneshot::channel::<()>();
    let (go, ready) = tokio::sync::oneshot::channel::<()>();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<(SocketAddr, PeerId)>>();

    let honest = in_namespace(&ns.honest, async move {
        let honest = honest_peers(|k| [10, 10 + k, 0, 1]).await;
        tx.send(ids(&honest)).unwrap();
        let _ = stopped_honest.await;
    });
    let honest_list = rx.recv_timeout(wait).expect("honest peers up");

    let asked = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
    let victim = in_namespace(&ns.victim, {
        let asked = asked.clone();
        async move {
            let (victim, discovery) = victim([10, 200, 1, 1], &honest_list).await;
            tx.send(victim.local_addr()).unwrap();
            let _ = ready.await;
            let honest_ids: Vec<_> = honest_list.iter().map(|(_, id)| *id).collect();
            judge(&victim, &discovery, &honest_ids, &asked).await;
            victim.shutdown().await;
        }
    });
    let target = rx.recv_timeout(wait).expect("victim up");

    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    let attack = in_namespace(&ns.attacker, async move {
        let attackers = attackers(|host| [10, 66, 0, host], target, &asked).await;
        tx.send(attackers.len()).unwrap();
        let _ = stopped_attack.await;
    });
    assert_eq!(rx.recv_timeout(wait), Ok(usize::from(ATTACKERS)));
    let _ = go.send(());
    let verdict = victim.join();
    let _ = stop_attack.send(());
    let _ = stop_honest.send(());
    let _ = attack.join();
    let _ = honest.join();
    drop(ns);
    if let Err(panic) = verdict {
        std::panic::resume_unwind(panic);
    }
}
