//! Connection limits: per-IP inbound cap before any handshake work, the inbound limit after
//! authentication, and persistent peers exempt from it.

mod common;

use std::time::Duration;

use common::*;
use peerwire::codec::GoodbyeReason;
use peerwire::{DisconnectReason, Keypair, Network, NetworkEvent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_cap_refuses_extra_connections_before_the_handshake() {
    let (x, _xi) = node(
        config()
            .max_inbound_per_ip(2)
            .handshake_timeout(Duration::from_millis(800)),
    )
    .await;
    // Two silent clients hold this IP's quota until their handshakes time out.
    let _s1 = tokio::net::TcpStream::connect(x.local_addr())
        .await
        .unwrap();
    let _s2 = tokio::net::TcpStream::connect(x.local_addr())
        .await
        .unwrap();
    eventually("two pending", || x.connections().len() == 2).await;
    let (a, _ai) = node(config()).await;
    assert!(
        a.connect(x.local_addr()).await.is_err(),
        "third from the same IP is refused"
    );
    assert!(
        x.stats()
            .inbound_refused
            .get("per_ip")
            .copied()
            .unwrap_or(0)
            >= 1
    );
    // Once the silent ones are dropped at the handshake timeout, the honest node gets in.
    eventually("quota freed", || x.connections().is_empty()).await;
    soon("honest connect", a.connect(x.local_addr()))
        .await
        .unwrap();
    a.shutdown().await;
    x.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_limit_refuses_others_but_never_a_persistent_peer() {
    let validator = Keypair::generate();
    let validator_id = validator.peer_id();
    // x lists the validator as persistent (at an address where nothing listens: x's own dials
    // fail, the validator dials in instead).
    let nowhere = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (x, _xi) = node(
        config()
            .max_inbound(1)
            .persistent_peer(nowhere, validator_id),
    )
    .await;
    let (a, _ai) = node(config()).await;
    let (b, _bi) = node(config()).await;
    a.connect(x.local_addr()).await.unwrap();
    eventually("a admitted", || x.is_connected(a.local_peer_id())).await;
    let mut b_events = b.events();
    let _ = b.connect(x.local_addr()).await;
    let ev = next_disconnect(&mut b_events).await;
    assert_eq!(
        ev,
        NetworkEvent::Disconnected {
            peer: x.local_peer_id(),
            reason: DisconnectReason::RemoteGoodbye(GoodbyeReason::Capacity)
        }
    );
    assert!(!x.is_connected(b.local_peer_id()));
    assert_eq!(x.stats().inbound_refused.get("max_inbound"), Some(&1));
    // The validator is admitted although the limit is reached.
    let (v, _vi) = Network::<bytes::Bytes>::start(config(), validator)
        .await
        .unwrap();
    v.connect(x.local_addr()).await.unwrap();
    eventually("validator admitted", || x.is_connected(validator_id)).await;
    assert_eq!(x.peers().len(), 2);
    for n in [&a, &b, &v, &x] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_outbound_refuses_a_dial_beyond_it_until_a_slot_frees() {
    let (a, _a_in) = node(config().max_outbound(1)).await;
    let (b, _b_in) = node(config()).await;
    let (c, _c_in) = node(config()).await;
    let b_id = soon("first dial", a.connect(b.local_addr())).await.unwrap();
    // The one outbound slot is held for as long as that connection lives.
    let refused = soon("second dial", a.connect(c.local_addr())).await;
    assert!(
        matches!(refused, Err(peerwire::ConnectError::OutboundLimit)),
        "{refused:?}"
    );
    assert!(!c.is_connected(a.local_peer_id()));
    // Closing it frees the slot (once its task has ended).
    assert!(a.disconnect(b_id).await.unwrap());
    eventually("slot freed", || a.connections().is_empty()).await;
    let c_id = soon("dial after the slot freed", a.connect(c.local_addr()))
        .await
        .unwrap();
    assert_eq!(c_id, c.local_peer_id());
    for n in [&a, &b, &c] {
        n.shutdown().await;
    }
}
