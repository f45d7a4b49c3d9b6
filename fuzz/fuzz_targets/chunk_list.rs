//! A chain of list blobs (store-format/tree.md, "Chunk lists") on untrusted bytes must expand to a
//! list of exactly the node's count or fail, never panic nor allocate past what the bytes and the
//! count allow. The input is a count (u16) and up to 17 blobs, each a u16 length and its bytes, so
//! copy ranges, literal counts, declared counts and chain order all come from the fuzzer. A chain
//! that expands must also survive a diff against itself and a FULL re-encoding.
#![no_main]

use cairn::format::chunk_list::{apply, diff, encode_full, expand, map_ids};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((count, mut rest)) = data.split_first_chunk::<2>().map(|(c, r)| (u16::from_le_bytes(*c), r)) else {
        return;
    };
    let mut blobs: Vec<&[u8]> = Vec::new();
    while let Some((len, after)) = rest.split_first_chunk::<2>() {
        let len = (u16::from_le_bytes(*len) as usize).min(after.len());
        blobs.push(&after[..len]);
        rest = &after[len..];
        if blobs.len() == 17 {
            break;
        }
    }
    for blob in &blobs {
        let _ = map_ids(blob, "list", |id| Ok(*id));
    }
    if let Ok(list) = expand(blobs.iter().map(|b| Ok((*b, "list".to_string()))), u64::from(count)) {
        assert_eq!(list.len(), count as usize, "a chain expands to the node's count");
        assert!(blobs.len() <= 16, "a chain holds at most 16 blobs");
        assert_eq!(apply(Some(&list), &diff(&list, &list), "list").expect("a diff applies"), list);
        assert_eq!(apply(None, &encode_full(&list), "list").expect("a full list decodes"), list);
    }
});
