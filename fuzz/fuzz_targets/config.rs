//! `Config::decode` on untrusted bytes must return an error or a value, never panic, and a decoded
//! config must survive encode then decode unchanged.
//!
//! Random bytes almost never carry a matching envelope checksum, so on its own the input would
//! only exercise the envelope checks. The input is therefore also sealed as a body in a valid
//! envelope, which lets the fuzzer reach the config fields themselves.
#![no_main]

use cairn::format::config::{Config, MAGIC, VERSION};
use cairn::format::envelope;
use libfuzzer_sys::fuzz_target;

fn check(bytes: &[u8]) {
    if let Ok(config) = Config::decode(bytes, "config") {
        let again = Config::decode(&config.encode(), "config")
            .expect("a decoded config must decode again after encoding");
        assert_eq!(again, config, "config changed across encode and decode");
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    check(&envelope::seal(MAGIC, VERSION, data));
});
