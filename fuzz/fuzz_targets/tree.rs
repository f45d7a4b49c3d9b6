//! `Tree::decode` on untrusted bytes must return an error or a value, never panic, and a decoded
//! tree must survive encode then decode unchanged. Every tree has one encoding (a version 2 tree
//! needs an extended attribute, store-format/tree.md "Versions"), so it must also re-encode to
//! the very bytes it came from: otherwise one directory could have two tree ids. Tree blobs carry
//! no checksum of their own (the blob id covers them), so raw input reaches every field, the
//! attribute counts and lengths of version 2 among them.
#![no_main]

use cairn::format::tree::Tree;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tree) = Tree::decode(data, "tree") {
        let encoded = tree.encode();
        assert_eq!(encoded, data, "a decoded tree must re-encode to its own bytes");
        let again = Tree::decode(&encoded, "tree")
            .expect("a decoded tree must decode again after encoding");
        assert_eq!(again, tree, "tree changed across encode and decode");
    }
});
