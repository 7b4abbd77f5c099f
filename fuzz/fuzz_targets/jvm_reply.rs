//! The reply of a JVM's attach listener comes from the target: any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer_user::jit::jvm_attach::parse_reply;

fuzz_target!(|data: &[u8]| {
    if let Ok(output) = parse_reply(data) {
        assert_eq!(output.trim(), output);
    }
});
