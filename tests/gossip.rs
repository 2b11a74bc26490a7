//! Topic gossip over loopback: publications cross nodes that are not connected to each other
//! (through a relay), carry their origin's proven id, stop where a validator rejects them, and
//! forged or altered ones are dropped and charged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use peerwire::protocols::gossip::{Gossip, GossipConfig, Topic};
use peerwire::{ChannelSpec, Config, Network, PeerId};
use serde::{Deserialize, Serialize};

const GOSSIP: u16 = 20;
const TOPIC: &str = "doc/bafy-test";

fn gossip_config() -> Config {
    config().channel(GOSSIP, ChannelSpec::normal())
}

/// Three nodes in a chain A – B – C (A and C not connected), each with gossip; B bans a
/// neighbour after `b_budget` points.
async fn chain_with(b_budget: u32) -> Vec<(Network<Bytes>, Gossip)> {
    let mut nodes = Vec::new();
    for i in 0..3 {
        let (net, _) = node(gossip_config()).await;
        let budget = if i == 1 { b_budget } else { 100 };
        let gossip = net
            .gossip(GossipConfig::new(GOSSIP).misbehaviour_budget(budget))
            .unwrap();
        nodes.push((net, gossip));
    }
    soon("connect", nodes[0].0.connect(nodes[1].0.local_addr()))
        .await
        .unwrap();
    soon("connect", nodes[2].0.connect(nodes[1].0.local_addr()))
        .await
        .unwrap();
    nodes
}

async fn chain() -> Vec<(Network<Bytes>, Gossip)> {
    chain_with(100).await
}

/// Waits until `gossip` sees `n` neighbours in `topic`.
async fn neighbours(gossip: &Gossip, topic: &str, n: usize) {
    eventually("topic neighbours", || gossip.neighbours(topic) == n).await;
}

async fn next<T: Serialize + serde::de::DeserializeOwned + Send + 'static>(
    topic: &mut Topic<T>,
) -> peerwire::protocols::gossip::GossipMessage<T> {
    soon("a publication", topic.recv())
        .await
        .expect("gossip running")
}

#[tokio::test]
async fn a_publication_crosses_a_relay_with_its_origin() {
    let nodes = chain().await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let a_topic = a.1.subscribe::<String>(TOPIC).unwrap();
    // B takes part without subscribing: it checks and forwards.
    b.1.relay(TOPIC).unwrap();
    let mut c_topic = c.1.subscribe::<String>(TOPIC).unwrap();
    neighbours(&b.1, TOPIC, 2).await;
    neighbours(&c.1, TOPIC, 1).await;
    neighbours(&a.1, TOPIC, 1).await;

    let id = a_topic.publish(&"hello from a".to_string()).await.unwrap();
    let message = next(&mut c_topic).await;
    assert_eq!(message.payload, "hello from a");
    assert_eq!(
        message.origin,
        a.0.local_peer_id(),
        "the origin, not the relay"
    );
    assert_eq!(message.id, id);
    assert_eq!(message.hops, 2);
    message.accept();
    // The relay forwarded it without delivering anything.
    let relayed = b.1.stats(TOPIC).unwrap();
    assert_eq!((relayed.received, relayed.delivered), (1, 0));
    assert_eq!(b.1.topics(), vec![(TOPIC.to_string(), false)]);

    // The same text again is a new publication (a new sequence number), not a duplicate.
    a_topic.publish(&"hello from a".to_string()).await.unwrap();
    let again = next(&mut c_topic).await;
    assert_ne!(again.id, id);
    again.accept();
}

#[tokio::test]
async fn without_a_relay_the_topic_does_not_cross_and_no_connection_is_opened() {
    let nodes = chain().await;
    let (a, c) = (&nodes[0], &nodes[2]);
    let a_topic = a.1.subscribe::<String>(TOPIC).unwrap();
    let mut c_topic = c.1.subscribe::<String>(TOPIC).unwrap();
    a_topic.publish(&"lost".to_string()).await.unwrap();
    // B, in neither role, carries nothing; joining opened no connection between A and C.
    let nothing = tokio::time::timeout(Duration::from_millis(300), c_topic.recv()).await;
    assert!(nothing.is_err(), "delivered without a relay");
    assert_eq!(a.0.peers().len(), 1);
    assert_eq!(a.1.neighbours(TOPIC), 0);
}

#[tokio::test]
async fn a_rejected_publication_stops_and_charges_the_neighbour_that_relayed_it() {
    // B bans after one rejection (10 points).
    let nodes = chain_with(10).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut b_events = b.0.events();
    let a_topic = a.1.subscribe::<u32>(TOPIC).unwrap();
    let mut b_topic = b.1.subscribe::<u32>(TOPIC).unwrap();
    let mut c_topic = c.1.subscribe::<u32>(TOPIC).unwrap();
    neighbours(&b.1, TOPIC, 2).await;
    neighbours(&a.1, TOPIC, 1).await;
    neighbours(&c.1, TOPIC, 1).await;
    a_topic.publish(&13).await.unwrap();
    a_topic.publish(&14).await.unwrap();
    // B's validator rejects odd numbers.
    for _ in 0..2 {
        let message = next(&mut b_topic).await;
        if message.payload % 2 == 1 {
            message.reject();
        } else {
            message.accept();
        }
    }
    // C gets only the accepted one.
    let first = next(&mut c_topic).await;
    assert_eq!(first.payload, 14);
    first.accept();
    let stats = b.1.stats(TOPIC).unwrap();
    assert_eq!((stats.received, stats.delivered, stats.dropped), (2, 2, 1));
    // The rejection was charged to A, the neighbour it came from: with a budget of one
    // rejection, A is banned.
    let a_id = a.0.local_peer_id();
    next_event(
        &mut b_events,
        |e| matches!(e, peerwire::NetworkEvent::Banned { peer, .. } if *peer == a_id),
    )
    .await;
}

/// The gossip messages as they go on the wire, mirrored here to play a hostile neighbour
/// (postcard: the same field order and variant order as the library's).
#[derive(Serialize, Deserialize)]
enum Wire {
    Join {
        topics: Vec<String>,
    },
    Leave {
        topics: Vec<String>,
    },
    Push {
        hops: u8,
        by_source: bool,
        publication: Publication,
    },
}

#[derive(Serialize, Deserialize)]
struct Publication {
    topic: String,
    origin: PeerId,
    seq: u64,
    payload: Bytes,
    signature: Bytes,
}

#[tokio::test]
async fn forged_and_altered_publications_are_dropped_and_charged() {
    let (b, _) = node(gossip_config()).await;
    let b_gossip = b
        .gossip(GossipConfig::new(GOSSIP).misbehaviour_budget(20))
        .unwrap();
    let mut b_topic = b_gossip.subscribe::<Bytes>(TOPIC).unwrap();
    let mut events = b.events();
    let mut raw = RawPeer::connect(b.local_addr(), "peerwire-test").await;
    let raw_id = raw.id();
    eventually("admitted", || b.is_connected(raw_id)).await;
    let send = |wire: &Wire| postcard::to_allocvec(wire).unwrap();
    let join = send(&Wire::Join {
        topics: vec![TOPIC.into()],
    });
    raw.encoder
        .push_message_on(GOSSIP, &join, 0, join.len())
        .unwrap();
    // Forged: claims another node as origin with a made-up signature.
    let someone = peerwire::Keypair::generate().peer_id();
    let forged = send(&Wire::Push {
        hops: 1,
        by_source: false,
        publication: Publication {
            topic: TOPIC.into(),
            origin: someone,
            seq: 1,
            payload: Bytes::from_static(b"forged"),
            signature: Bytes::from(vec![7u8; 64]),
        },
    });
    raw.encoder
        .push_message_on(GOSSIP, &forged, 0, forged.len())
        .unwrap();
    // Altered: signed by the raw peer over one payload, sent with another.
    let altered = send(&Wire::Push {
        hops: 1,
        by_source: true,
        publication: Publication {
            topic: TOPIC.into(),
            origin: raw_id,
            seq: 2,
            payload: Bytes::from_static(b"altered"),
            signature: Bytes::from(raw.keypair.sign(b"something else").to_vec()),
        },
    });
    raw.encoder
        .push_message_on(GOSSIP, &altered, 0, altered.len())
        .unwrap();
    raw.flush().await.unwrap();
    // 10 points each: two of them spend the budget of 20.
    let banned = next_event(
        &mut events,
        |e| matches!(e, peerwire::NetworkEvent::Banned { peer, .. } if *peer == raw_id),
    )
    .await;
    assert!(matches!(banned, peerwire::NetworkEvent::Banned { .. }));
    let stats = b_gossip.stats(TOPIC).unwrap();
    assert_eq!((stats.delivered, stats.dropped), (0, 2));
    assert!(
        tokio::time::timeout(Duration::from_millis(100), b_topic.recv())
            .await
            .is_err(),
        "a forged publication was delivered"
    );
}
