//! The webhook's whole answer to a request body: parse, policy, patch.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidewatch::webhook::inject::{Scope, Settings};

fuzz_target!(|body: &[u8]| {
    let settings = Settings::default();
    let _ = sidewatch::webhook::review(body, Scope::Annotated, &settings, "fuzz");
    let _ = sidewatch::webhook::review(body, Scope::Namespace, &settings, "fuzz");
});
