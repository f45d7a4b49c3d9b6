//! `Tree::decode` on untrusted bytes must return an error or a value, never panic, and a decoded
//! tree must survive encode then decode unchanged. Tree blobs carry no checksum of their own (the
//! blob id covers them), so raw input reaches every field.
#![no_main]

use cairn::format::tree::Tree;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tree) = Tree::decode(data, "tree") {
        let again = Tree::decode(&tree.encode(), "tree")
            .expect("a decoded tree must decode again after encoding");
        assert_eq!(again, tree, "tree changed across encode and decode");
    }
});
