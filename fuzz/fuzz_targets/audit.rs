//! Audit record decoder: no panic on any bytes; a decoded record re-encodes to one that decodes
//! to the same value. Inputs are also sealed in a valid envelope so the JSON body is reached.
#![no_main]

use cairn::format::audit::{AuditRecord, MAGIC, VERSION};
use cairn::format::envelope;
use libfuzzer_sys::fuzz_target;

fn round_trip(data: &[u8]) {
    if let Ok(record) = AuditRecord::decode(data, "audit") {
        let again = AuditRecord::decode(&record.encode(), "audit").expect("re-encoded record decodes");
        assert_eq!(again, record, "audit record changed across encode and decode");
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip(data);
    round_trip(&envelope::seal(MAGIC, VERSION, data));
});
