//! Handshake tests driven without sockets (message by message) and over `tokio::io::duplex`.

use super::driver::framed;
use super::*;

fn params(network: &str, expected: Option<PeerId>) -> HandshakeParams {
    HandshakeParams {
        network_id: network.into(),
        listen_addr: Some("127.0.0.1:9000".parse().unwrap()),
        expected_peer: expected,
        dial_seq: 41,
    }
}

/// Runs initiator and responder against each other in memory; returns both outcomes.
fn run(
    a: &Keypair,
    a_params: HandshakeParams,
    b: &Keypair,
    b_params: HandshakeParams,
) -> (
    Result<Outcome, HandshakeError>,
    Result<Outcome, HandshakeError>,
) {
    let (mut init, msg1) = Handshake::initiator(a, a_params).unwrap();
    let mut resp = Handshake::responder(b, b_params).unwrap();
    let p1 = resp.read(&msg1).unwrap();
    let msg2 = p1.send.unwrap();
    let p2 = match init.read(&msg2) {
        Ok(p) => p,
        Err(e) => return (Err(e), Ok(Outcome::Continue)),
    };
    let resp_outcome = match p2.send {
        Some(msg3) => resp.read(&msg3).map(|p| p.outcome),
        None => Ok(Outcome::Continue),
    };
    (Ok(p2.outcome), resp_outcome)
}

#[test]
fn success_proves_both_identities_and_keys_match() {
    let (a, b) = (Keypair::generate(), Keypair::generate());
    let responder_params = HandshakeParams {
        dial_seq: 7, // a responder's own number is not the connection's
        ..params("net", None)
    };
    let (ia, rb) = run(&a, params("net", Some(b.peer_id())), &b, responder_params);
    let (Outcome::Done(mut ea), Outcome::Done(mut eb)) = (ia.unwrap(), rb.unwrap()) else {
        panic!("handshake did not finish")
    };
    assert_eq!(ea.peer, b.peer_id());
    assert_eq!(eb.peer, a.peer_id());
    assert_eq!(eb.listen_addr, Some("127.0.0.1:9000".parse().unwrap()));
    // Both sides hold the initiator's dial number.
    assert_eq!((ea.dial_seq, eb.dial_seq), (41, 41));
    // Keys agree in both directions.
    let mut msg = b"proposal".to_vec();
    let tag = ea.sealer.seal(b"", &mut msg).unwrap();
    msg.extend_from_slice(&tag);
    let n = eb.opener.open(b"", &mut msg).unwrap();
    assert_eq!(&msg[..n], b"proposal");
    let mut back = b"vote".to_vec();
    let tag = eb.sealer.seal(b"", &mut back).unwrap();
    back.extend_from_slice(&tag);
    assert!(ea.opener.open(b"", &mut back).is_ok());
}

#[test]
fn wrong_network_id_is_refused_on_both_sides_with_reason() {
    let (a, b) = (Keypair::generate(), Keypair::generate());
    let (ia, rb) = run(&a, params("mainnet", None), &b, params("testnet", None));
    assert!(matches!(
        ia.unwrap(),
        Outcome::Refused(HandshakeError::NetworkMismatch { ref ours, ref theirs })
            if ours == "mainnet" && theirs == "testnet"
    ));
    assert!(matches!(
        rb.unwrap(),
        Outcome::Refused(HandshakeError::NetworkMismatch { ref ours, .. }) if ours == "testnet"
    ));
}

#[test]
fn wrong_expected_peer_is_refused() {
    let (a, b, c) = (
        Keypair::generate(),
        Keypair::generate(),
        Keypair::generate(),
    );
    let (ia, _) = run(&a, params("n", Some(c.peer_id())), &b, params("n", None));
    match ia.unwrap() {
        Outcome::Refused(HandshakeError::PeerMismatch { expected, actual }) => {
            assert_eq!(expected, c.peer_id());
            assert_eq!(actual, b.peer_id());
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn self_connection_is_refused() {
    let a = Keypair::generate();
    let (ia, _) = run(&a, params("n", None), &a, params("n", None));
    assert!(matches!(
        ia.unwrap(),
        Outcome::Refused(HandshakeError::SelfConnection)
    ));
}

#[test]
fn tampered_message_or_signature_fails() {
    let (a, b) = (Keypair::generate(), Keypair::generate());
    let (mut init, msg1) = Handshake::initiator(&a, params("n", None)).unwrap();
    let mut resp = Handshake::responder(&b, params("n", None)).unwrap();
    let mut msg2 = resp.read(&msg1).unwrap().send.unwrap();
    // Flip a bit inside the encrypted payload: AEAD rejects it.
    let last = msg2.len() - 20;
    msg2[last] ^= 1;
    assert!(matches!(init.read(&msg2), Err(HandshakeError::Noise(_))));
}

#[test]
fn identity_payload_signed_by_another_key_is_refused() {
    // A responder that claims identity `victim` but signs with its own key.
    let (a, victim, mallory) = (
        Keypair::generate(),
        Keypair::generate(),
        Keypair::generate(),
    );
    let (mut init, msg1) = Handshake::initiator(&a, params("n", None)).unwrap();
    let mut resp = Handshake::responder(&mallory, params("n", None)).unwrap();
    // Mallory runs the Noise layer honestly but forges the payload's identity field.
    let mut scratch = vec![0u8; MAX_HANDSHAKE_MESSAGE];
    resp.noise.read_message(&msg1, &mut scratch).unwrap();
    let mut signed = SIGNATURE_DOMAIN.to_vec();
    signed.extend_from_slice(resp.noise.get_handshake_hash());
    signed.extend_from_slice(&resp.local_static);
    let forged = Payload {
        version: PROTOCOL_VERSION,
        network_id: "n".into(),
        identity: *victim.peer_id().as_bytes(),
        signature: mallory.sign(&signed),
        listen_addr: None,
        dial_seq: 0,
    };
    let msg2 = resp
        .write(&postcard::to_allocvec(&forged).unwrap())
        .unwrap();
    assert!(matches!(
        init.read(&msg2),
        Err(HandshakeError::BadSignature)
    ));
}

#[test]
fn a_peer_of_the_previous_version_gets_a_typed_refusal() {
    // A version-2 node (before channels): same payload layout, older version number.
    let (a, old) = (Keypair::generate(), Keypair::generate());
    let (mut init, msg1) = Handshake::initiator(&a, params("n", None)).unwrap();
    let mut resp = Handshake::responder(&old, params("n", None)).unwrap();
    let mut scratch = vec![0u8; MAX_HANDSHAKE_MESSAGE];
    resp.noise.read_message(&msg1, &mut scratch).unwrap();
    let mut signed = SIGNATURE_DOMAIN.to_vec();
    signed.extend_from_slice(resp.noise.get_handshake_hash());
    signed.extend_from_slice(&resp.local_static);
    let v2 = Payload {
        version: 2,
        network_id: "n".into(),
        identity: *old.peer_id().as_bytes(),
        signature: old.sign(&signed),
        listen_addr: None,
        dial_seq: 0,
    };
    let msg2 = resp.write(&postcard::to_allocvec(&v2).unwrap()).unwrap();
    let progress = init.read(&msg2).unwrap();
    assert!(matches!(
        progress.outcome,
        Outcome::Refused(HandshakeError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: 2
        })
    ));
    assert_eq!(
        PROTOCOL_VERSION, 6,
        "the welcome needs version 4, gossip's root stamps 5, its source trees 6"
    );
}

#[test]
fn replayed_first_message_and_low_order_keys_are_refused() {
    let (a, b) = (Keypair::generate(), Keypair::generate());
    let (_init, msg1) = Handshake::initiator(&a, params("n", None)).unwrap();
    let mut resp = Handshake::responder(&b, params("n", None)).unwrap();
    resp.read(&msg1).unwrap();
    // Feeding msg1 again at the msg3 stage is not a valid msg3.
    assert!(resp.read(&msg1).is_err());
    let mut resp2 = Handshake::responder(&b, params("n", None)).unwrap();
    assert!(matches!(
        resp2.read(&[0u8; 32]),
        Err(HandshakeError::LowOrderKey)
    ));
    assert!(matches!(
        resp2.read(&vec![1u8; MAX_HANDSHAKE_MESSAGE + 1]),
        Err(HandshakeError::MessageTooLarge { .. })
    ));
}

#[test]
fn a_message_of_the_largest_size_is_read_and_a_short_one_refused_without_a_panic() {
    let (a, b) = (Keypair::generate(), Keypair::generate());
    // Exactly the largest size is not too large: it is read (and fails as Noise, not as size).
    let mut resp = Handshake::responder(&b, params("n", None)).unwrap();
    let mut big = vec![7u8; MAX_HANDSHAKE_MESSAGE];
    big[..32].copy_from_slice(&Handshake::initiator(&a, params("n", None)).unwrap().1[..32]);
    assert!(!matches!(
        resp.read(&big),
        Err(HandshakeError::MessageTooLarge { .. })
    ));
    // Shorter than a key, at either side's first read: refused, never sliced past its end.
    for short in [&[][..], &[9u8; 31][..]] {
        let mut resp = Handshake::responder(&b, params("n", None)).unwrap();
        assert!(matches!(resp.read(short), Err(HandshakeError::LowOrderKey)));
        let (mut init, _) = Handshake::initiator(&a, params("n", None)).unwrap();
        assert!(matches!(init.read(short), Err(HandshakeError::LowOrderKey)));
    }
    // A low-order ephemeral key in msg2 is refused as such, before any Noise work; a msg2 of
    // just a good key is short for Noise, not low order.
    let (mut init, _) = Handshake::initiator(&a, params("n", None)).unwrap();
    assert!(matches!(
        init.read(&[0u8; 96]),
        Err(HandshakeError::LowOrderKey)
    ));
    let key = Handshake::initiator(&b, params("n", None)).unwrap().1;
    let (mut init, _) = Handshake::initiator(&a, params("n", None)).unwrap();
    let result = init.read(&key[..32]);
    assert!(
        matches!(&result, Err(e) if !matches!(e, HandshakeError::LowOrderKey)),
        "{:?}",
        result.map(|_| ())
    );
}

/// `future`, failing the test if it takes longer than 10 s (a side waiting for a message the
/// other will never send).
async fn bounded<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(std::time::Duration::from_secs(10), future)
        .await
        .expect("the handshake hung")
}

#[tokio::test]
async fn handshake_over_duplex_succeeds_and_keeps_early_bytes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (a, b) = (Keypair::generate(), Keypair::generate());
    let (mut x, mut y) = tokio::io::duplex(4096);
    // The responder runs the driver; the initiator is driven here, so its last handshake
    // message and the session's first bytes go out in one write, as a fast peer's would.
    let right = tokio::spawn(async move {
        let result = perform(&mut y, &b, params("n", None), false).await;
        (result, b.peer_id())
    });
    let (mut init, msg1) = Handshake::initiator(&a, params("n", None)).unwrap();
    bounded(x.write_all(&framed(&msg1))).await.unwrap();
    let mut len = [0u8; 2];
    bounded(x.read_exact(&mut len)).await.unwrap();
    let mut msg2 = vec![0u8; usize::from(u16::from_be_bytes(len))];
    bounded(x.read_exact(&mut msg2)).await.unwrap();
    let progress = init.read(&msg2).unwrap();
    let Outcome::Done(ea) = progress.outcome else {
        panic!("the initiator did not finish: {:?}", progress.outcome);
    };
    let mut last = framed(&progress.send.unwrap());
    last.extend_from_slice(b"early frame bytes");
    bounded(x.write_all(&last)).await.unwrap();
    let (right, b_id) = bounded(right).await.unwrap();
    let (eb, rest) = right.unwrap();
    assert_eq!(ea.peer, b_id);
    assert_eq!(eb.peer, a.peer_id());
    assert_eq!(&rest[..], b"early frame bytes");
}

#[tokio::test]
async fn handshake_over_duplex_wrong_network_fails_both_sides() {
    let (a, b) = (Keypair::generate(), Keypair::generate());
    let (mut x, mut y) = tokio::io::duplex(4096);
    let left = tokio::spawn(async move { perform(&mut x, &a, params("one", None), true).await });
    let right = bounded(perform(&mut y, &b, params("two", None), false)).await;
    assert!(matches!(right, Err(HandshakeError::NetworkMismatch { .. })));
    assert!(matches!(
        bounded(left).await.unwrap(),
        Err(HandshakeError::NetworkMismatch { .. })
    ));
}

#[test]
fn debug_names_the_node_and_stage_and_never_the_secret_key() {
    let a = Keypair::generate();
    let (init, _) = Handshake::initiator(&a, params("n", None)).unwrap();
    let text = format!("{init:?}");
    assert!(text.contains(&format!("{:?}", a.peer_id())), "{text}");
    assert!(text.contains("stage"), "{text}");
    let secret: String = a
        .secret_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(!text.contains(&secret), "{text}");
}

#[tokio::test(start_paused = true)]
async fn a_silent_initiator_never_completes_the_handshake() {
    let b = Keypair::generate();
    let (_x, mut y) = tokio::io::duplex(4096);
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        perform(&mut y, &b, params("n", None), false),
    )
    .await;
    assert!(
        result.is_err(),
        "a silent initiator must not finish the handshake"
    );
}

#[test]
fn a_network_id_longer_than_the_bound_is_refused_before_any_message() {
    let a = Keypair::generate();
    let at_bound = "n".repeat(MAX_NETWORK_ID_LEN);
    assert!(Handshake::initiator(&a, params(&at_bound, None)).is_ok());
    assert!(Handshake::responder(&a, params(&at_bound, None)).is_ok());
    let over = "n".repeat(MAX_NETWORK_ID_LEN + 1);
    assert!(matches!(
        Handshake::initiator(&a, params(&over, None)),
        Err(HandshakeError::BadParams(_))
    ));
    assert!(matches!(
        Handshake::responder(&a, params(&over, None)),
        Err(HandshakeError::BadParams(_))
    ));
}

#[tokio::test]
async fn the_driver_refuses_an_oversize_length_before_its_body_and_reads_one_at_the_bound() {
    use tokio::io::AsyncWriteExt;
    let (a, b) = (Keypair::generate(), Keypair::generate());
    // Over the bound: refused on the length alone (the body is never sent).
    let (mut x, mut y) = tokio::io::duplex(4096);
    let over = u16::try_from(MAX_HANDSHAKE_MESSAGE + 1).unwrap();
    bounded(x.write_all(&over.to_be_bytes())).await.unwrap();
    assert!(matches!(
        bounded(perform(&mut y, &b, params("n", None), false)).await,
        Err(HandshakeError::MessageTooLarge { .. })
    ));
    // At the bound: read whole and handed to Noise, which refuses it as no handshake message.
    let (mut x, mut y) = tokio::io::duplex(4096);
    let mut big = vec![7u8; MAX_HANDSHAKE_MESSAGE];
    big[..32].copy_from_slice(&Handshake::initiator(&a, params("n", None)).unwrap().1[..32]);
    bounded(x.write_all(&framed(&big))).await.unwrap();
    let result = bounded(perform(&mut y, &b, params("n", None), false)).await;
    assert!(
        matches!(&result, Err(e) if !matches!(e, HandshakeError::MessageTooLarge { .. })),
        "{:?}",
        result.map(|_| ())
    );
}

/// A Noise key-agreement that is honest for ephemeral keys and, for the static key it is given,
/// claims a low-order point: every exchange with it yields zeros, which the other side, multiplying
/// by that point, computes too. So the messages it writes are valid Noise; only the low-order check
/// stops them.
struct LowOrderStatic {
    inner: Box<dyn snow::types::Dh>,
    is_static: bool,
}

impl snow::types::Dh for LowOrderStatic {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn pub_len(&self) -> usize {
        self.inner.pub_len()
    }
    fn priv_len(&self) -> usize {
        self.inner.priv_len()
    }
    fn set(&mut self, privkey: &[u8]) {
        self.is_static = true;
        self.inner.set(privkey);
    }
    fn generate(&mut self, rng: &mut dyn snow::types::Random) -> Result<(), snow::Error> {
        self.inner.generate(rng)
    }
    fn pubkey(&self) -> &[u8] {
        if self.is_static {
            &LOW_ORDER_POINTS[2]
        } else {
            self.inner.pubkey()
        }
    }
    fn privkey(&self) -> &[u8] {
        self.inner.privkey()
    }
    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        if self.is_static {
            out[..32].fill(0);
            Ok(())
        } else {
            self.inner.dh(pubkey, out)
        }
    }
}

struct LowOrderResolver(snow::resolvers::DefaultResolver);

impl snow::resolvers::CryptoResolver for LowOrderResolver {
    fn resolve_rng(&self) -> Option<Box<dyn snow::types::Random>> {
        self.0.resolve_rng()
    }
    fn resolve_dh(&self, choice: &snow::params::DHChoice) -> Option<Box<dyn snow::types::Dh>> {
        Some(Box::new(LowOrderStatic {
            inner: self.0.resolve_dh(choice)?,
            is_static: false,
        }))
    }
    fn resolve_hash(
        &self,
        choice: &snow::params::HashChoice,
    ) -> Option<Box<dyn snow::types::Hash>> {
        self.0.resolve_hash(choice)
    }
    fn resolve_cipher(
        &self,
        choice: &snow::params::CipherChoice,
    ) -> Option<Box<dyn snow::types::Cipher>> {
        self.0.resolve_cipher(choice)
    }
}

#[test]
fn a_low_order_static_key_is_refused_although_the_noise_message_is_valid() {
    let (a, b) = (Keypair::generate(), Keypair::generate());
    // b answers with a static key that is a low-order point, and signs it properly.
    let noise = snow::Builder::with_resolver(
        NOISE_PATTERN.parse().unwrap(),
        Box::new(LowOrderResolver(snow::resolvers::DefaultResolver)),
    )
    .local_private_key(&[7u8; 32])
    .unwrap()
    .prologue(PROLOGUE)
    .unwrap()
    .build_responder()
    .unwrap();
    let mut evil = Handshake {
        noise,
        keypair: b.clone(),
        local_static: LOW_ORDER_POINTS[2].to_vec(),
        params: params("n", None),
        stage: Stage::ResponderAwaitMsg1,
    };
    let (mut init, msg1) = Handshake::initiator(&a, params("n", None)).unwrap();
    let msg2 = evil.read(&msg1).unwrap().send.unwrap();
    assert!(
        matches!(init.read(&msg2), Err(HandshakeError::LowOrderKey)),
        "a low-order static key must be refused"
    );
}
