//! `KeyFile::decode` on untrusted bytes must return an error or a value, never panic, and a
//! decoded key file must survive encode then decode unchanged. Sealed envelopes too:
//! `envelope::decrypt` with a key must fail cleanly on anything that was not sealed with it.
//!
//! As for the config target, the input is also wrapped as the body of a valid envelope so the
//! fuzzer reaches the fields themselves.
#![no_main]

use cairn::crypto::{Keys, MasterKey};
use cairn::format::envelope;
use cairn::format::key::{KeyFile, MAGIC, VERSION};
use libfuzzer_sys::fuzz_target;

fn check(bytes: &[u8]) {
    if let Ok(key) = KeyFile::decode(bytes, "key") {
        let again = KeyFile::decode(&key.encode(), "key").expect("a decoded key file must decode again");
        assert_eq!(again, key, "key file changed across encode and decode");
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    check(&envelope::seal(MAGIC, VERSION, data));
    let keys = Keys::new(MasterKey { encryption: [3; 32], id: [4; 32] });
    let _ = envelope::decrypt(data, Some(&keys), "sealed");
    let mut sealed = envelope::seal(MAGIC, VERSION, data);
    if sealed.len() > 10 {
        sealed[10] = envelope::ENCRYPTION_AES256GCM;
        assert!(envelope::decrypt(&sealed, Some(&keys), "sealed").is_err(), "unsealed bytes never open");
    }
});
