//! `IndexFile::decode` on untrusted bytes must return an error or a value, never panic, and a
//! decoded index must survive encode then decode unchanged.
//!
//! As for the config target, the input is also sealed as the body of a valid envelope, because
//! random bytes almost never match the envelope checksum and the entry parser would never run.
#![no_main]

use cairn::format::envelope;
use cairn::format::index::{IndexFile, MAGIC, VERSION};
use libfuzzer_sys::fuzz_target;

fn check(bytes: &[u8]) {
    if let Ok(index) = IndexFile::decode(bytes, "index") {
        let again = IndexFile::decode(&index.encode(), "index")
            .expect("a decoded index must decode again after encoding");
        assert_eq!(again, index, "index changed across encode and decode");
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    check(&envelope::seal(MAGIC, VERSION, data));
});
