//! Fuzzing the server-sent-events decoder that reads every upstream stream:
//! arbitrary bytes in arbitrary chunks never panic, and a well-formed stream
//! decodes to the events it was made of however the network splits it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fuzz_support;

use fuzz_support::check;
use meridian_node::sse::{SseDecoder, SseEvent};
use proptest::prelude::*;

/// Feeds `chunks` in order, then ends the stream. `Err` at the first error,
/// as the provider adapters stop there.
fn decode(chunks: &[&[u8]]) -> Result<Vec<SseEvent>, String> {
    let mut d = SseDecoder::default();
    let mut events = Vec::new();
    for c in chunks {
        events.extend(d.push(c)?);
    }
    events.extend(d.finish()?);
    Ok(events)
}

/// `bytes` cut at `cuts` (positions, any order, repeats allowed).
fn split<'a>(bytes: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    at.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
}

#[test]
fn arbitrary_chunks_never_panic() {
    let byte = prop_oneof![
        any::<u8>(),
        prop::sample::select(b"\r\n:data event".to_vec()),
    ];
    let chunks = prop::collection::vec(prop::collection::vec(byte, 0..64), 0..16);
    check(256, chunks, |chunks| {
        let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        // Either answer is fine; reaching it without a panic is the property.
        let _ = decode(&refs);
        Ok(())
    });
}

/// One line of an event's block, as a provider writes it.
#[derive(Clone, Debug)]
enum Line {
    Data(String),
    Comment(String),
    /// A field the decoder ignores (`id`, `retry`).
    Other(&'static str, String),
}

#[derive(Clone, Debug)]
struct Event {
    name: Option<String>,
    lines: Vec<Line>,
}

/// Field values: any text without line breaks (`\PC` excludes them).
fn arb_value() -> impl Strategy<Value = String> {
    "\\PC{0,24}"
}

fn arb_event() -> impl Strategy<Value = Event> {
    let line = prop_oneof![
        4 => arb_value().prop_map(Line::Data),
        1 => arb_value().prop_map(Line::Comment),
        1 => (prop::sample::select(vec!["id", "retry"]), arb_value())
            .prop_map(|(f, v)| Line::Other(f, v)),
    ];
    (
        prop::option::of("[a-z_]{1,20}"),
        prop::collection::vec(line, 1..5),
        arb_value(),
    )
        .prop_map(|(name, mut lines, first)| {
            // Every event carries data; one without is not an event.
            lines.insert(0, Line::Data(first));
            Event { name, lines }
        })
}

/// Serialises `events` with line ending `eol`; the last one is left without
/// its blank line when `unterminated`, as a stream cut at the end would be.
fn encode(events: &[Event], eol: &str, unterminated: bool) -> Vec<u8> {
    let mut out = String::new();
    for (i, e) in events.iter().enumerate() {
        if let Some(name) = &e.name {
            out += &format!("event: {name}{eol}");
        }
        for line in &e.lines {
            out += &match line {
                Line::Data(v) => format!("data: {v}{eol}"),
                Line::Comment(v) => format!(":{v}{eol}"),
                Line::Other(f, v) => format!("{f}: {v}{eol}"),
            };
        }
        if !(unterminated && i + 1 == events.len()) {
            out += eol;
        }
    }
    out.into_bytes()
}

fn expected(events: &[Event]) -> Vec<SseEvent> {
    events
        .iter()
        .map(|e| SseEvent {
            event: e.name.clone(),
            data: e
                .lines
                .iter()
                .filter_map(|l| match l {
                    Line::Data(v) => Some(v.as_str()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("\n"),
        })
        .collect()
}

/// LF and CRLF streams (every provider's): split anywhere, even inside a
/// multi-byte character or between the CR and LF of a line ending, the
/// decoder yields exactly the events written, in order.
#[test]
fn a_valid_stream_split_anywhere_decodes_to_its_events() {
    let stream = (
        prop::collection::vec(arb_event(), 0..6),
        prop::sample::select(vec!["\n", "\r\n"]),
        any::<bool>(),
        prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    );
    check(256, stream, |(events, eol, unterminated, cuts)| {
        let bytes = encode(&events, eol, unterminated);
        let whole = decode(&[&bytes]);
        prop_assert_eq!(whole.as_ref(), Ok(&expected(&events)));
        prop_assert_eq!(decode(&split(&bytes, &cuts)), whole);
        // One byte at a time: the most splits there can be.
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        prop_assert_eq!(decode(&bytewise), decode(&[&bytes]));
        Ok(())
    });
}

/// Whatever the bytes, splitting them never changes the outcome: the same
/// events, or an error.
#[test]
fn any_bytes_decode_the_same_however_split() {
    let byte = prop_oneof![
        3 => prop::sample::select(b"\r\n:data event x".to_vec()),
        1 => any::<u8>(),
    ];
    let input = (
        prop::collection::vec(byte, 0..256),
        prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    );
    check(256, input, |(bytes, cuts)| {
        let whole = decode(&[&bytes]);
        let pieces = decode(&split(&bytes, &cuts));
        match (&whole, &pieces) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(_), Err(_)) => {}
            _ => prop_assert!(false, "whole {whole:?}, split {pieces:?}"),
        }
        Ok(())
    });
}
