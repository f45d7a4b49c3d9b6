//! `check_header` and `decode_trailer` on untrusted bytes must return an error, a trailer (entries
//! and dictionaries) or a request for more bytes, never panic. A decoded trailer must survive
//! `trailer` then `decode_trailer` unchanged, and a request for more bytes must ask for more than
//! it was given and no more than the pack holds.
//!
//! The input is tried three ways, each at pack versions 1 to 3 (the version changes what the
//! trailer may hold): as a whole pack; as the tail of a pack whose length is read from the input's
//! first 8 bytes (to exercise the length checks); and cut to whole entries behind a tail with the
//! right count, length, checksum and magic, because random bytes almost never match the trailer
//! checksum and the entry parser would otherwise never run. The input's first byte, read as a
//! count of entries, leaves the rest of that cut to dictionaries.
#![no_main]

use cairn::format::pack::{self, TrailerRead, ENTRY_LEN, HEADER_LEN, TRAILER_MAGIC};
use cairn::id::Id;
use libfuzzer_sys::fuzz_target;

fn check(tail: &[u8], pack_len: u64) {
    for version in 1..=pack::VERSION {
        check_at(tail, pack_len, version);
    }
}

fn check_at(tail: &[u8], pack_len: u64, version: u16) {
    match pack::decode_trailer(tail, pack_len, version, "p") {
        Ok(TrailerRead::Read(trailer)) => {
            let encoded = pack::trailer(&trailer.entries, &trailer.dictionaries);
            match pack::decode_trailer(&encoded, pack_len, version, "p") {
                Ok(TrailerRead::Read(again)) => {
                    assert_eq!(again, trailer, "trailer changed across encode and decode")
                }
                Ok(TrailerRead::NeedMore(n)) => {
                    panic!("a whole re-encoded trailer asked for {n} bytes")
                }
                Err(e) => panic!("a re-encoded trailer failed to decode: {e}"),
            }
        }
        Ok(TrailerRead::NeedMore(n)) => {
            assert!(n > tail.len(), "asked for {n} bytes, had {}", tail.len());
            assert!(
                n as u64 <= pack_len,
                "asked for {n} bytes of a {pack_len}-byte pack"
            );
        }
        Err(_) => {}
    }
}

/// `data` cut to at most as many whole entries as its first byte says, then whole dictionary
/// ids, followed by a valid tail for them.
fn with_valid_tail(data: &[u8]) -> Vec<u8> {
    let wanted = data.first().map_or(0, |&n| n as usize);
    let count = (data.len() / ENTRY_LEN).min(wanted);
    let dictionaries = (data.len() - count * ENTRY_LEN) / 32;
    let entries = &data[..count * ENTRY_LEN + dictionaries * 32];
    let mut out = entries.to_vec();
    out.extend_from_slice(&(count as u32).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    out.extend_from_slice(&Id::of(entries).0);
    out.extend_from_slice(TRAILER_MAGIC);
    out
}

fuzz_target!(|data: &[u8]| {
    let _ = pack::check_header(data, "p");
    check(data, data.len() as u64);

    let claimed_len = data
        .get(..8)
        .map(|first| u64::from_le_bytes(first.try_into().expect("8 bytes")));
    if let Some(pack_len) = claimed_len {
        check(data, pack_len);
    }

    let tail = with_valid_tail(data);
    check(&tail, (HEADER_LEN + tail.len()) as u64);
    if let Some(pack_len) = claimed_len {
        check(&tail, pack_len);
    }
});
