//! The config file parser: any text gets a config or an error naming where it went wrong.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = sidewatch::config::parse_str(text, Path::new("fuzz.yaml"));
    let _ = sidewatch::config::duration::parse(text);
});
