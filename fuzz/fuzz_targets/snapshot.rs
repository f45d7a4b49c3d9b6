//! `Snapshot::decode` on untrusted bytes must return an error or a value, never panic, and a
//! decoded manifest must survive encode then decode unchanged.
//!
//! As for the config target, the input is also sealed as the body of a valid envelope, because
//! random bytes almost never match the envelope checksum and the manifest parser would never run.
#![no_main]

use cairn::format::envelope;
use cairn::format::snapshot::{Snapshot, MAGIC, VERSION};
use libfuzzer_sys::fuzz_target;

fn check(bytes: &[u8]) {
    if let Ok(snapshot) = Snapshot::decode(bytes, "snapshot") {
        let again = Snapshot::decode(&snapshot.encode(), "snapshot")
            .expect("a decoded snapshot must decode again after encoding");
        assert_eq!(again, snapshot, "snapshot changed across encode and decode");
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    check(&envelope::seal(MAGIC, VERSION, data));
});
