//! Codec tests: round trips, chunking independence, hostile input, limits.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::cipher::{Opener, Sealer};
use super::frame::{FrameDecoder, FrameEncoder, MAX_FRAME_CIPHERTEXT};
use super::record::{Inbound, RecordDecoder};
use super::*;

const KEY: [u8; 32] = [42u8; 32];

/// Encodes `messages` (with a control record after every third) using frames of `frame_size`.
fn encode_stream(messages: &[Vec<u8>], frame_size: usize) -> BytesMut {
    let mut enc = FrameEncoder::with_frame_size(Sealer::new(&KEY), frame_size);
    for (i, m) in messages.iter().enumerate() {
        let mut offset = 0;
        loop {
            offset = enc.push_message(m, offset).unwrap();
            if offset == m.len() {
                break;
            }
        }
        if i % 3 == 2 {
            enc.push_control(&encode_control(&ControlMessage::Ping { nonce: i as u64 }))
                .unwrap();
        }
    }
    enc.seal().unwrap();
    enc.output().split()
}

/// Decodes a stream delivered in the given chunks; returns all inbound items.
fn decode_chunks(chunks: &[&[u8]], max_message: usize) -> Result<Vec<Inbound>, CodecError> {
    let mut frames = FrameDecoder::new(Opener::new(&KEY));
    let mut records = RecordDecoder::new(max_message);
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        while let Some(plain) = frames.decode(&mut buf)? {
            records.decode_frame(plain, &mut |i| items.push(i));
        }
    }
    assert!(buf.is_empty(), "leftover bytes");
    Ok(items)
}

fn messages_of(items: &[Inbound]) -> Vec<Vec<u8>> {
    items
        .iter()
        .filter_map(|i| match i {
            Inbound::Message { bytes, .. } => Some(bytes.to_vec()),
            _ => None,
        })
        .collect()
}

#[test]
fn small_and_large_messages_round_trip_with_interleaved_control() {
    let messages = vec![
        vec![1u8; 10],
        vec![2u8; 1000],
        vec![3u8; 5000],
        vec![],
        vec![5u8; 300],
    ];
    let stream = encode_stream(&messages, 256);
    let items = decode_chunks(&[&stream], 1 << 20).unwrap();
    assert_eq!(messages_of(&items), messages);
    let controls = items
        .iter()
        .filter(|i| matches!(i, Inbound::Control(_)))
        .count();
    assert_eq!(controls, 1);
    assert!(!items.iter().any(|i| matches!(i, Inbound::Violation(_))));
}

#[test]
fn encoder_counts_the_frames_it_seals() {
    let mut enc = FrameEncoder::with_frame_size(Sealer::new(&KEY), 256);
    let message = vec![1u8; 1000];
    let mut offset = 0;
    while offset < message.len() {
        offset = enc.push_message(&message, offset).unwrap();
    }
    enc.seal().unwrap();
    let mut frames = FrameDecoder::new(Opener::new(&KEY));
    let mut buf = enc.output().split();
    let mut decoded = 0;
    while frames.decode(&mut buf).unwrap().is_some() {
        decoded += 1;
    }
    assert!(decoded > 1);
    assert_eq!(enc.take_sealed_frames(), decoded);
    assert_eq!(enc.take_sealed_frames(), 0, "taking resets the count");
}

#[test]
fn a_message_of_max_size_spanning_many_frames_arrives_intact() {
    let big: Vec<u8> = (0..(3 * 1024 * 1024 + 17))
        .map(|i| (i % 251) as u8)
        .collect();
    let stream = encode_stream(std::slice::from_ref(&big), frame::MAX_FRAME_PLAINTEXT);
    let items = decode_chunks(&[&stream], big.len()).unwrap();
    assert_eq!(messages_of(&items), vec![big]);
}

#[test]
fn oversize_message_is_rejected_skipped_and_stream_continues() {
    let messages = vec![vec![9u8; 4000], vec![7u8; 20]];
    let stream = encode_stream(&messages, 512);
    let items = decode_chunks(&[&stream], 1000).unwrap();
    assert_eq!(
        items[0],
        Inbound::Violation(Violation::Oversize {
            len: 4000,
            max: 1000
        })
    );
    assert_eq!(messages_of(&items), vec![vec![7u8; 20]]);
}

/// Decodes `stream` with decoders sharing one budget, one decoder per part of `parts` (each a
/// whole encoded stream); returns the decoders (still holding what they hold) and their items.
fn decode_sharing(
    budget: &std::sync::Arc<record::ReassemblyBudget>,
    parts: &[&[u8]],
) -> (Vec<RecordDecoder>, Vec<Vec<Inbound>>) {
    let mut decoders = Vec::new();
    let mut all = Vec::new();
    for part in parts {
        let mut frames = FrameDecoder::new(Opener::new(&KEY));
        let mut records = RecordDecoder::new(1 << 20);
        records.set_budget(budget.clone());
        let mut buf = BytesMut::from(*part);
        let mut items = Vec::new();
        while let Some(plain) = frames.decode(&mut buf).unwrap() {
            records.decode_frame(plain, &mut |i| items.push(i));
        }
        decoders.push(records);
        all.push(items);
    }
    (decoders, all)
}

#[test]
fn partial_messages_are_charged_to_a_shared_budget_and_given_back() {
    let budget = record::ReassemblyBudget::new(10_000);
    assert_eq!((budget.held(), budget.refused()), (0, 0));
    // The first 6,000 bytes of a 50,000-byte message, twice: the second passes the budget.
    let whole = encode_stream(&[vec![1u8; 50_000]], 512);
    let partial = &whole[..6_500];
    let (decoders, items) = decode_sharing(&budget, &[partial, partial]);
    assert!(items[0].is_empty(), "{:?}", items[0]);
    assert_eq!(
        items[1],
        vec![Inbound::Violation(Violation::ReassemblyBudget)]
    );
    assert!(
        budget.held() <= 10_000 && budget.held() > 5_000,
        "{}",
        budget.held()
    );
    assert_eq!(budget.refused(), 1);
    // A decoder that goes (its connection closed) gives its bytes back.
    drop(decoders);
    assert_eq!(budget.held(), 0);
    // A refused message is skipped to its end; a message that completes gives its bytes back.
    let two = encode_stream(&[vec![2u8; 9_000], vec![3u8; 8_000]], 512);
    let (decoders, items) = decode_sharing(&budget, &[&two]);
    assert_eq!(
        messages_of(&items[0]),
        vec![vec![2u8; 9_000], vec![3u8; 8_000]]
    );
    assert_eq!(budget.held(), 0);
    drop(decoders);
    let small = record::ReassemblyBudget::new(4_000);
    let (_decoders, items) = decode_sharing(&small, &[&two]);
    assert_eq!(items[0][0], Inbound::Violation(Violation::ReassemblyBudget));
    assert!(messages_of(&items[0]).is_empty(), "{:?}", items[0]);
    assert_eq!(small.held(), 0);
}

#[test]
fn oversize_frame_length_is_rejected_before_allocation() {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&u32::MAX.to_be_bytes());
    let mut dec = FrameDecoder::new(Opener::new(&KEY));
    let err = dec.decode(&mut buf).unwrap_err();
    assert!(matches!(err, CodecError::FrameTooLarge { .. }));
    // Nothing was reserved for the announced body.
    assert!(buf.capacity() < 1024);
    let mut buf = BytesMut::from(&((MAX_FRAME_CIPHERTEXT + 1) as u32).to_be_bytes()[..]);
    assert!(dec.decode(&mut buf).is_err());
}

#[test]
fn corrupted_frame_fails_authentication() {
    let mut stream = encode_stream(&[vec![1, 2, 3]], 256);
    let last = stream.len() - 1;
    stream[last] ^= 0x80;
    assert_eq!(
        decode_chunks(&[&stream], 100).unwrap_err(),
        CodecError::Authentication
    );
}

#[test]
fn record_rule_violations_are_reported_not_fatal() {
    // Hand-build frame plaintexts that break record rules, seal them properly.
    let mut sealer = Sealer::new(&KEY);
    let mut stream = BytesMut::new();
    let mut seal_frame = |plain: &[u8]| {
        let mut body = plain.to_vec();
        let header = ((body.len() + 16) as u32).to_be_bytes();
        let tag = sealer.seal(&header, &mut body).unwrap();
        stream.extend_from_slice(&header);
        stream.extend_from_slice(&body);
        stream.extend_from_slice(&tag);
    };
    seal_frame(&[0x7f, 0, 0, 0, 0]); // unknown kind
    seal_frame(&[0x03, 0, 0, 0, 3, 0, 0, 9]); // continue without start
    seal_frame(&[0x01, 0, 0, 0, 99, 1]); // record longer than frame
    seal_frame(&[0x01, 0, 0, 0, 3, 0, 9, 1]); // a channel the decoder does not know
    seal_frame(&[0x01, 0, 0, 0, 1, 0]); // too short for a channel id
    seal_frame(&[0x01, 0, 0, 0, 4, 0, 0, 8, 8]); // a good one after all that
    let items = decode_chunks(&[&stream], 100).unwrap();
    assert_eq!(
        items,
        vec![
            Inbound::Violation(Violation::UnknownKind(0x7f)),
            Inbound::Violation(Violation::FragmentOutOfSequence),
            Inbound::Violation(Violation::MalformedRecord),
            Inbound::Violation(Violation::UnknownChannel(9)),
            Inbound::Violation(Violation::MalformedRecord),
            Inbound::Message {
                channel: 0,
                bytes: Bytes::from_static(&[8, 8])
            },
        ]
    );
}

#[test]
fn message_encoding_round_trips_and_rejects_trailing_bytes() {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Vote {
        height: u64,
        round: u32,
        block: [u8; 4],
    }
    let vote = Vote {
        height: 7,
        round: 2,
        block: [1, 2, 3, 4],
    };
    let bytes = encode_message(&vote, 1024).unwrap();
    assert_eq!(decode_message::<Vote>(&bytes).unwrap(), vote);
    let mut longer = bytes.to_vec();
    longer.push(0);
    assert!(decode_message::<Vote>(&longer).is_err());
    assert!(matches!(
        encode_message(&vec![0u8; 100], 50),
        Err(CodecError::MessageTooLarge { max: 50, .. })
    ));
    // Exactly the bound is not too large (a one-byte length prefix and 49 bytes).
    assert_eq!(encode_message(&vec![0u8; 49], 50).unwrap().len(), 50);
    let ping = ControlMessage::Ping { nonce: 5 };
    assert_eq!(decode_control(&encode_control(&ping)).unwrap(), ping);
    assert_eq!(decode_control(&[0xff, 0xff]), Err(Violation::BadControl));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn any_chunking_yields_the_same_messages(
        messages in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..3000), 1..20),
        frame_size in 64usize..4096,
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
    ) {
        let stream = encode_stream(&messages, frame_size);
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        points.push(0);
        points.push(stream.len());
        points.sort_unstable();
        points.dedup();
        let chunks: Vec<&[u8]> = points.windows(2).map(|w| &stream[w[0]..w[1]]).collect();
        let items = decode_chunks(&chunks, 1 << 20).unwrap();
        prop_assert_eq!(messages_of(&items), messages);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(data in prop::collection::vec(any::<u8>(), 0..2048)) {
        let mut frames = FrameDecoder::new(Opener::new(&KEY));
        let mut buf = BytesMut::from(&data[..]);
        let _ = frames.decode(&mut buf);
        // The record layer sees only authenticated plaintext, but must still survive any bytes.
        let mut records = RecordDecoder::new(1000);
        records.decode_frame(BytesMut::from(&data[..]), &mut |_| {});
        prop_assert!(records.buffered() <= 1000);
        let _ = decode_control(&data);
        let _ = decode_message::<(u64, String, Vec<u8>)>(&data);
    }
}

#[test]
fn raw_bytes_are_their_own_body_and_typed_messages_keep_postcard() {
    let raw = Bytes::from_static(b"\x00\xffborsh bytes");
    let body = encode_body(&raw, 64).unwrap();
    assert_eq!(body, raw, "no length prefix, no re-encoding");
    assert_eq!(body.as_ptr(), raw.as_ptr(), "the same memory, not a copy");
    let back: Bytes = decode_body(body.clone()).unwrap();
    assert_eq!(back.as_ptr(), body.as_ptr(), "decoded without a copy");
    assert!(matches!(
        encode_body(&raw, 3),
        Err(CodecError::MessageTooLarge { len, max: 3 }) if len == raw.len()
    ));
    assert_eq!(
        encode_body(&raw, raw.len()).unwrap(),
        raw,
        "exactly the bound fits"
    );
    // A Vec<u8> is a typed message: postcard's length prefix stays.
    let typed = encode_body(&raw.to_vec(), 64).unwrap();
    assert_eq!(typed.len(), raw.len() + 1);
    assert_eq!(decode_body::<Vec<u8>>(typed).unwrap(), raw.to_vec());
    assert!(is_raw::<Bytes>() && !is_raw::<Vec<u8>>());
}

#[test]
fn a_64_kib_message_fits_one_frame_and_a_header_may_announce_128_kib_and_a_tag() {
    // The wire format: frames carry up to 128 KiB of plaintext, so a 64 KiB message (and
    // its record header) is one frame.
    let mut enc = FrameEncoder::new(Sealer::new(&KEY));
    let message = vec![5u8; 64 * 1024];
    assert_eq!(enc.push_message(&message, 0).unwrap(), message.len());
    enc.seal().unwrap();
    assert_eq!(enc.take_sealed_frames(), 1);
    // A header may announce 128 KiB plus the 16-byte tag, and not a byte more.
    let mut dec = FrameDecoder::new(Opener::new(&KEY));
    let mut at_bound = BytesMut::from(&(128u32 * 1024 + 16).to_be_bytes()[..]);
    assert_eq!(dec.decode(&mut at_bound), Ok(None), "waits for the body");
    let mut over = BytesMut::from(&(128u32 * 1024 + 17).to_be_bytes()[..]);
    assert!(matches!(
        dec.decode(&mut over),
        Err(CodecError::FrameTooLarge { max, .. }) if max == 128 * 1024 + 16
    ));
}

#[test]
fn an_idle_encoder_frees_its_buffer_but_never_bytes_not_yet_written() {
    let mut enc = FrameEncoder::new(Sealer::new(&KEY));
    enc.push_message(b"vote", 0).unwrap();
    enc.seal().unwrap();
    let sealed = enc.output().clone();
    assert!(!sealed.is_empty());
    // Sealed and not yet written: kept.
    enc.release_idle();
    assert_eq!(enc.output()[..], sealed[..]);
    // An open frame not yet sealed: kept too.
    enc.push_message(b"more", 0).unwrap();
    enc.release_idle();
    assert!(enc.buffered() > sealed.len());
    // Written (the writer clears the output): freed.
    enc.seal().unwrap();
    enc.output().clear();
    enc.release_idle();
    assert_eq!(enc.output().capacity(), 0);
    // The next record takes one small buffer (4 KiB), not one grown a few bytes at a time.
    enc.push_message(b"again", 0).unwrap();
    assert_eq!(enc.buffered(), enc.output().len());
    assert!((4096..64 * 1024).contains(&enc.output().capacity()));
}

#[test]
fn a_record_that_does_not_fit_the_open_frame_opens_the_next_one() {
    // 64-byte frames; a 52-byte message (7 bytes of record header) leaves 5 bytes, one short
    // of a control record with a 1-byte body.
    let mut enc = FrameEncoder::with_frame_size(Sealer::new(&KEY), 64);
    assert_eq!(enc.push_message(&[3u8; 52], 0).unwrap(), 52);
    enc.push_control(&[1]).unwrap();
    enc.seal().unwrap();
    assert_eq!(enc.take_sealed_frames(), 2);
    let mut frames = FrameDecoder::new(Opener::new(&KEY));
    let mut buf = enc.output().split();
    let mut plaintexts = Vec::new();
    while let Some(plain) = frames.decode(&mut buf).unwrap() {
        plaintexts.push(plain.len());
    }
    assert_eq!(plaintexts, vec![59, 6]);
}

#[test]
fn messages_fill_frames_exactly_and_a_fragment_needs_room_for_a_byte() {
    let encoder = || FrameEncoder::with_frame_size(Sealer::new(&KEY), 64);
    // A message whose record (7 bytes of header) exactly fills a 64-byte frame is one
    // Message record in one frame, not fragments.
    let mut enc = encoder();
    assert_eq!(enc.push_message(&[1u8; 57], 0).unwrap(), 57);
    enc.seal().unwrap();
    assert_eq!(enc.take_sealed_frames(), 1);
    let items = decode_chunks(&[&enc.output().split()], 1000).unwrap();
    assert_eq!(messages_of(&items), vec![vec![1u8; 57]]);
    // A Start fragment takes 11 bytes of header and needs one more for data: with 11 bytes
    // left it opens the next frame (53 bytes of data there), with 20 left it carries 9.
    for (first, left, taken) in [(46usize, 11usize, 53usize), (37, 20, 9)] {
        let mut enc = encoder();
        enc.push_message(&vec![2u8; first], 0).unwrap();
        assert_eq!(enc.buffered(), 4 + 64 - left, "{left} bytes left");
        assert_eq!(enc.push_message(&[3u8; 100], 0).unwrap(), taken);
    }
}

#[test]
fn a_frame_shorter_than_a_tag_is_refused_and_one_of_just_a_tag_opens() {
    let mut dec = FrameDecoder::new(Opener::new(&KEY));
    let mut short = BytesMut::from(&5u32.to_be_bytes()[..]);
    short.extend_from_slice(&[0u8; 5]);
    assert!(matches!(
        dec.decode(&mut short),
        Err(CodecError::FrameTooShort { len: 5, min: 16 })
    ));
    // An empty plaintext sealed: exactly a tag, a valid frame (the encoder never sends one).
    let header = 16u32.to_be_bytes();
    let tag = Sealer::new(&KEY).seal(&header, &mut []).unwrap();
    let mut frame = BytesMut::from(&header[..]);
    frame.extend_from_slice(&tag);
    let mut dec = FrameDecoder::new(Opener::new(&KEY));
    assert_eq!(dec.decode(&mut frame).unwrap().map(|p| p.len()), Some(0));
}

#[test]
fn a_partial_frame_grows_the_buffer_once_to_the_whole_frame() {
    // A header announcing 1,000 bytes and the first 10 of them: the buffer is grown to the
    // whole frame at once (the reader then fills it in as few reads as the socket allows),
    // not by more.
    let mut buf = BytesMut::from(&1000u32.to_be_bytes()[..]);
    buf.extend_from_slice(&[0u8; 10]);
    let mut dec = FrameDecoder::new(Opener::new(&KEY));
    assert_eq!(dec.decode(&mut buf), Ok(None));
    assert!((1004..1020).contains(&buf.capacity()), "{}", buf.capacity());
}

/// The message bodies `decoder` yields for `plaintext`, as (bytes, len, is_empty).
fn bodies(decoder: &mut RecordDecoder, plaintext: &Bytes) -> Vec<(Vec<u8>, usize, bool)> {
    let mut seen = Vec::new();
    decoder.decode_borrowed(plaintext, &mut |r| {
        if let record::Record::Message { body, .. } = r {
            seen.push((body.as_slice().to_vec(), body.len(), body.is_empty()));
        }
    });
    seen
}

#[test]
fn bodies_lent_from_a_frame_or_reassembled_report_their_bytes_and_what_is_held() {
    let mut enc = FrameEncoder::with_frame_size(Sealer::new(&KEY), 64);
    enc.push_message(b"hello", 0).unwrap();
    enc.push_message(b"", 0).unwrap();
    let big: Vec<u8> = (0..100u8).collect();
    let mut offset = 0;
    while offset < big.len() {
        offset = enc.push_message(&big, offset).unwrap();
    }
    enc.seal().unwrap();
    let mut frames = FrameDecoder::new(Opener::new(&KEY));
    let mut buf = enc.output().split();
    let mut plaintexts = Vec::new();
    while let Some(plain) = frames.decode(&mut buf).unwrap() {
        plaintexts.push(plain.freeze());
    }
    let mut decoder = RecordDecoder::new(1000);
    // First frame: the two small messages (lent from the frame) and the big one's start.
    let first = bodies(&mut decoder, &plaintexts[0]);
    assert_eq!(
        first,
        vec![(b"hello".to_vec(), 5, false), (vec![], 0, true)]
    );
    let held = decoder.buffered();
    assert!(held > 0 && held < big.len(), "{held}");
    // The rest: the big message, reassembled, and nothing held any more.
    let mut rest = Vec::new();
    for plain in &plaintexts[1..] {
        rest.extend(bodies(&mut decoder, plain));
    }
    assert_eq!(rest, vec![(big.clone(), 100, false)]);
    assert_eq!(decoder.buffered(), 0);
}

#[test]
fn a_record_longer_than_what_is_left_of_its_frame_is_malformed_not_a_panic() {
    // A Message record announcing 9 bytes where 5 are left.
    for announced in 6u8..=12 {
        let plaintext = Bytes::from(vec![0x01, 0, 0, 0, announced, 0, 0, b'a', b'b', b'c']);
        let mut items = Vec::new();
        RecordDecoder::new(1000).decode_frame(BytesMut::from(&plaintext[..]), &mut |i| {
            items.push(i);
        });
        assert_eq!(
            items,
            vec![Inbound::Violation(Violation::MalformedRecord)],
            "{announced}"
        );
    }
}

/// A record as it appears in a frame's plaintext: kind, body length, body.
fn rec(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A data record on channel 0: `prefix` (a Start's total) then `len` bytes of `fill`.
fn data(kind: u8, prefix: Option<u32>, len: usize, fill: u8) -> Vec<u8> {
    let mut body = vec![0u8, 0];
    if let Some(total) = prefix {
        body.extend_from_slice(&total.to_be_bytes());
    }
    body.extend(std::iter::repeat_n(fill, len));
    rec(kind, &body)
}

/// What a decoder accepting messages up to 100 bytes makes of these records, one frame each.
fn decode_records(frames: &[Vec<u8>]) -> Vec<Inbound> {
    let mut decoder = RecordDecoder::new(100);
    let mut items = Vec::new();
    for frame in frames {
        decoder.decode_frame(BytesMut::from(&frame[..]), &mut |i| items.push(i));
    }
    items
}

const MESSAGE: u8 = 0x01;
const START: u8 = 0x02;
const CONTINUE: u8 = 0x03;

#[test]
fn records_at_the_size_bound_pass_and_one_byte_over_is_oversize() {
    // A whole message of exactly the bound, then one byte over.
    let items = decode_records(&[data(MESSAGE, None, 100, 1), data(MESSAGE, None, 101, 2)]);
    assert_eq!(messages_of(&items), vec![vec![1u8; 100]]);
    assert!(matches!(
        items[1],
        Inbound::Violation(Violation::Oversize { len: 101, max: 100 })
    ));
    // A fragmented message of exactly the bound is reassembled; one announcing a byte more
    // is refused at its Start and its fragments are skipped to its end, exactly: the
    // message after them arrives whole and nothing else is charged.
    let items = decode_records(&[
        data(START, Some(100), 60, 3),
        data(CONTINUE, None, 40, 3),
        data(START, Some(101), 60, 4),
        data(CONTINUE, None, 41, 4),
        data(MESSAGE, None, 5, 5),
    ]);
    assert_eq!(messages_of(&items), vec![vec![3u8; 100], vec![5u8; 5]]);
    assert_eq!(items.len(), 3, "{items:?}");
    assert!(matches!(
        items[1],
        Inbound::Violation(Violation::Oversize { len: 101, max: 100 })
    ));
}

#[test]
fn a_start_needs_its_total_and_a_skipped_message_must_not_run_past_its_end() {
    // A Start of just its total (no data yet) is fine; three bytes of total are not.
    let items = decode_records(&[data(START, Some(10), 0, 0), data(CONTINUE, None, 10, 6)]);
    assert_eq!(messages_of(&items), vec![vec![6u8; 10]]);
    let short = rec(START, &[0, 0, 0, 0, 10]);
    assert_eq!(
        decode_records(&[short]),
        vec![Inbound::Violation(Violation::MalformedRecord)]
    );
    // A Start carrying its whole message is the message; one carrying more than its total
    // is malformed.
    let items = decode_records(&[data(START, Some(4), 4, 7), data(START, Some(4), 5, 7)]);
    assert_eq!(messages_of(&items), vec![vec![7u8; 4]]);
    assert_eq!(items[1], Inbound::Violation(Violation::MalformedRecord));
    // An oversize message being skipped: a fragment of exactly what is left ends the skip;
    // one longer than that is malformed.
    let items = decode_records(&[
        data(START, Some(150), 100, 7),
        data(CONTINUE, None, 50, 7),
        data(MESSAGE, None, 3, 8),
    ]);
    assert_eq!(messages_of(&items), vec![vec![8u8; 3]]);
    let items = decode_records(&[data(START, Some(150), 100, 7), data(CONTINUE, None, 51, 7)]);
    assert_eq!(
        items[1..],
        [Inbound::Violation(Violation::MalformedRecord)],
        "{items:?}"
    );
}

#[test]
fn a_message_refused_by_the_budget_mid_way_is_skipped_exactly_to_its_end() {
    // With 100 bytes of budget: 60 of a message held, the next 50 refused. 40 bytes are then
    // left to skip (150 in all) or none (110 in all); either way the next message is clean.
    for (total, left) in [(150u32, 40usize), (110, 0)] {
        let mut decoder = RecordDecoder::new(1000);
        decoder.set_budget(record::ReassemblyBudget::new(100));
        let mut frames = vec![data(START, Some(total), 60, 1), data(CONTINUE, None, 50, 1)];
        if left > 0 {
            frames.push(data(CONTINUE, None, left, 1));
        }
        frames.push(data(MESSAGE, None, 3, 9));
        let mut items = Vec::new();
        for frame in &frames {
            decoder.decode_frame(BytesMut::from(&frame[..]), &mut |i| items.push(i));
        }
        assert_eq!(items.len(), 2, "{total}: {items:?}");
        assert_eq!(
            items[0],
            Inbound::Violation(Violation::ReassemblyBudget),
            "{total}"
        );
        assert_eq!(messages_of(&items), vec![vec![9u8; 3]], "{total}");
        assert_eq!(decoder.buffered(), 0);
    }
    // Refused at its Start (60 bytes against 50 of budget): the other 90 are skipped.
    let mut decoder = RecordDecoder::new(1000);
    decoder.set_budget(record::ReassemblyBudget::new(50));
    let mut items = Vec::new();
    for frame in [
        data(START, Some(150), 60, 1),
        data(CONTINUE, None, 90, 1),
        data(MESSAGE, None, 3, 9),
    ] {
        decoder.decode_frame(BytesMut::from(&frame[..]), &mut |i| items.push(i));
    }
    assert_eq!(
        items,
        vec![
            Inbound::Violation(Violation::ReassemblyBudget),
            Inbound::Message {
                channel: 0,
                bytes: Bytes::from(vec![9u8; 3])
            }
        ]
    );
}

#[test]
fn small_bodies_encode_as_encode_message_does_across_many_shared_buffers() {
    // Enough messages to use up several shared buffers: every one is intact and byte-for-byte
    // what the exact-size encoding gives, whatever was encoded after it.
    let messages: Vec<(u64, Vec<u8>)> = (0..2_000u64)
        .map(|i| (i, vec![(i % 251) as u8; (i % 40) as usize]))
        .collect();
    let pooled: Vec<Bytes> = messages
        .iter()
        .map(|m| encode_body(m, 1 << 20).unwrap())
        .collect();
    for (m, body) in messages.iter().zip(&pooled) {
        assert_eq!(body, &encode_message(m, 1 << 20).unwrap());
        assert_eq!(&decode_message::<(u64, Vec<u8>)>(body).unwrap(), m);
    }
    // Consecutive small bodies are cut from one buffer (what makes them cost no allocation).
    let (a, b) = (&pooled[1], &pooled[2]);
    assert_eq!(a.as_ptr().wrapping_add(a.len()), b.as_ptr());
}

#[test]
fn a_body_to_be_kept_is_never_cut_from_the_shared_buffer() {
    // (Each test runs on a thread of its own, so the shared buffer here is this test's.)
    let before = encode_body(&1u8, 64).unwrap();
    let kept = encode_body_kept(&(7u64, [3u8; 20]), 64).unwrap();
    let after = encode_body(&2u8, 64).unwrap();
    assert_eq!(kept, encode_message(&(7u64, [3u8; 20]), 64).unwrap());
    assert_eq!(before.as_ptr().wrapping_add(before.len()), after.as_ptr());
    let raw = Bytes::from_static(b"raw");
    assert_eq!(encode_body_kept(&raw, 64).unwrap(), raw);
    assert!(matches!(
        encode_body_kept(&Bytes::from_static(b"too long"), 4),
        Err(CodecError::MessageTooLarge { .. })
    ));
}

#[test]
fn bodies_past_the_pooled_size_or_the_limit_are_as_before() {
    let large = vec![3u8; POOLED_MAX + 1];
    let before = encode_body(&1u8, 64).unwrap();
    let body = encode_body(&large, 1 << 20).unwrap();
    let after = encode_body(&2u8, 64).unwrap();
    assert_eq!(body, encode_message(&large, 1 << 20).unwrap());
    // It took a buffer of its own: the small bodies around it are cut one after the other.
    assert_eq!(before.as_ptr().wrapping_add(before.len()), after.as_ptr());
    // The limit holds below the pooled size too: refused, and the buffer is left usable.
    assert!(matches!(
        encode_body(&vec![0u8; 100], 50),
        Err(CodecError::MessageTooLarge { len: 101, max: 50 })
    ));
    assert_eq!(
        encode_body(&7u32, 50).unwrap(),
        encode_message(&7u32, 50).unwrap()
    );
}

/// A value that measures fine, then fails when written: it reaches the shared buffer.
struct FailsWhenWritten(std::cell::Cell<u32>);

impl Serialize for FailsWhenWritten {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeTuple};
        let pass = self.0.get();
        self.0.set(pass + 1);
        let mut tuple = serializer.serialize_tuple(2)?;
        tuple.serialize_element(&[9u8; 8])?;
        if pass > 0 {
            return Err(S::Error::custom("half way"));
        }
        tuple.serialize_element(&1u8)?;
        tuple.end()
    }
}

/// A value that writes more than it measured (it changed between the two passes).
struct GrowsWhenWritten(std::cell::Cell<usize>);

impl Serialize for GrowsWhenWritten {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let len = self.0.get();
        self.0.set(len + 100);
        serializer.serialize_bytes(&vec![5u8; len])
    }
}

/// A value whose serialization encodes another body, as a `Serialize` that sends would.
struct EncodesInside;

impl Serialize for EncodesInside {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let inner = encode_body(&42u64, 64).map_err(serde::ser::Error::custom)?;
        serializer.serialize_bytes(&inner)
    }
}

#[test]
fn a_failed_or_nested_encoding_leaves_the_shared_buffer_consistent() {
    assert!(matches!(
        encode_body(&FailsWhenWritten(std::cell::Cell::new(0)), 64),
        Err(CodecError::Encode(_))
    ));
    // What the failed write left in the buffer is not in front of the next body.
    let next = encode_body(&9u16, 64).unwrap();
    assert_eq!(next, encode_message(&9u16, 64).unwrap());
    let after = encode_body(&10u16, 64).unwrap();
    assert_eq!(next.as_ptr().wrapping_add(next.len()), after.as_ptr());
    // A value that writes more than it measured (10 bytes measured, 110 written into the
    // shared buffer) takes the exact-size path, as before this buffer existed: written a third
    // time, 210 bytes, and not an error.
    let grown = encode_body(&GrowsWhenWritten(std::cell::Cell::new(10)), 1024).unwrap();
    assert_eq!(
        decode_message::<serde_bytes_like::Bytes>(&grown).unwrap().0,
        vec![5u8; 210]
    );
    // The next body is whole and alone.
    assert_eq!(
        encode_body(&9u16, 64).unwrap(),
        encode_message(&9u16, 64).unwrap()
    );
    // Encoding inside an encoding: the inner one cannot borrow the buffer the outer holds and
    // takes an exact-size one instead; both come out right.
    let outer = encode_body(&EncodesInside, 64).unwrap();
    let inner = decode_message::<serde_bytes_like::Bytes>(&outer).unwrap();
    assert_eq!(decode_message::<u64>(&inner.0).unwrap(), 42);
}

/// Reads a postcard byte string back (what `serialize_bytes` wrote).
mod serde_bytes_like {
    #[derive(Debug)]
    pub(super) struct Bytes(pub(super) Vec<u8>);

    impl<'de> serde::Deserialize<'de> for Bytes {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visit;
            impl serde::de::Visitor<'_> for Visit {
                type Value = Bytes;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                    Ok(Bytes(v.to_vec()))
                }
            }
            d.deserialize_bytes(Visit)
        }
    }
}

#[test]
fn control_records_pushed_from_the_stack_are_those_of_encode_control() {
    let messages = [
        ControlMessage::Ping { nonce: u64::MAX },
        ControlMessage::Ack {
            channel: u16::MAX,
            next: u64::MAX,
        },
        ControlMessage::Resume {
            channel: 3,
            incarnation: u64::MAX,
            first_seq: u64::MAX,
        },
        ControlMessage::Goodbye {
            reason: GoodbyeReason::Misbehaviour,
        },
        ControlMessage::Welcome,
        ControlMessage::Pong { nonce: u64::MAX },
        ControlMessage::Rewind {
            channel: u16::MAX,
            from: u64::MAX,
        },
    ];
    for message in messages {
        // Every variant is above: a new one fails to compile here until it is added.
        match message {
            ControlMessage::Goodbye { .. }
            | ControlMessage::Ping { .. }
            | ControlMessage::Pong { .. }
            | ControlMessage::Resume { .. }
            | ControlMessage::Ack { .. }
            | ControlMessage::Rewind { .. }
            | ControlMessage::Welcome => {}
        }
        let mut by_stack = FrameEncoder::new(Sealer::new(&KEY));
        by_stack.push_control_message(&message).unwrap();
        let mut by_heap = FrameEncoder::new(Sealer::new(&KEY));
        by_heap.push_control(&encode_control(&message)).unwrap();
        by_stack.seal().unwrap();
        by_heap.seal().unwrap();
        assert_eq!(
            by_stack.output().split(),
            by_heap.output().split(),
            "{message:?}"
        );
    }
}
