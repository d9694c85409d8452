//! `Config::parse` over arbitrary text (seeded with the shipped `config.toml`); the
//! properties are `ipgate_fuzz::check_config`'s.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ipgate_fuzz::check_config(&String::from_utf8_lossy(data));
});
