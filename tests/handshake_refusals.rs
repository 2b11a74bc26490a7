//! Handshake refusals over real TCP: wrong expected peer, other network, self-connection,
//! a silent client dropped at the handshake timeout.

mod common;

use std::time::Duration;

use common::*;
use peerwire::handshake::HandshakeError;
use peerwire::{ConnectError, Keypair};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_with_wrong_expected_peer_fails_typed() {
    let (a, _ai) = node(config()).await;
    let (b, _bi) = node(config()).await;
    let impostor = Keypair::generate().peer_id();
    let err = a.connect_to(b.local_addr(), impostor).await.unwrap_err();
    match err {
        ConnectError::Handshake {
            source: HandshakeError::PeerMismatch { expected, actual },
            ..
        } => {
            assert_eq!(expected, impostor);
            assert_eq!(actual, b.local_peer_id());
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(a.peers().is_empty());
    assert_eq!(
        a.connect_to(b.local_addr(), b.local_peer_id())
            .await
            .unwrap(),
        b.local_peer_id()
    );
    soon("shutdown", a.shutdown()).await;
    soon("shutdown", b.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_of_another_network_is_refused_with_reason_on_both_sides() {
    let (a, _ai) = node(config().network_id("mainnet")).await;
    let (b, _bi) = node(config().network_id("testnet")).await;
    let err = soon("connect", a.connect(b.local_addr()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            ConnectError::Handshake { source: HandshakeError::NetworkMismatch { ours, theirs }, .. }
                if ours == "mainnet" && theirs == "testnet"
        ),
        "{err:?}"
    );
    eventually("b counts the refusal", || {
        b.stats().handshake_failures.get("network_mismatch") == Some(&1)
    })
    .await;
    assert!(a.peers().is_empty() && b.peers().is_empty());
    soon("shutdown", a.shutdown()).await;
    soon("shutdown", b.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_connection_is_refused() {
    let (a, _ai) = node(config()).await;
    let err = soon("connect", a.connect(a.local_addr()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ConnectError::Handshake {
                source: HandshakeError::SelfConnection,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(a.peers().is_empty());
    soon("shutdown", a.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_dropped_at_handshake_timeout() {
    let (a, _ai) = node(config().inbound_handshake_timeout(Duration::from_millis(300))).await;
    let mut silent = tokio::net::TcpStream::connect(a.local_addr())
        .await
        .unwrap();
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 16];
    let n = soon("server closes", silent.read(&mut buf))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0, "no bytes, just closed");
    eventually("timeout counted", || {
        a.stats().handshake_failures.get("timeout") == Some(&1)
    })
    .await;
    assert!(a.connections().is_empty());
    soon("shutdown", a.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_to_closed_port_fails_typed() {
    let (a, _ai) = node(config()).await;
    // Bound but not listening: the port stays ours (a listener dropped here freed it, and a
    // node of a test running beside this one took it once, so the dial succeeded), and a
    // connection to it is refused.
    let unused = tokio::net::TcpSocket::new_v4().unwrap();
    unused.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = unused.local_addr().unwrap();
    let err = soon("connect", a.connect(addr)).await.unwrap_err();
    drop(unused);
    assert!(matches!(err, ConnectError::Dial { .. }), "{err:?}");
    assert!(a.connections().is_empty());
    soon("shutdown", a.shutdown()).await;
}
