//! A class histogram comes from whatever answers on the JVM's attach socket: any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer_user::jvm_heap::histogram::{MAX_CLASSES, parse};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(histogram) = parse(&text) {
        assert!(histogram.classes.len() <= MAX_CLASSES);
        let bytes: u64 = histogram.classes.iter().map(|c| c.bytes).sum();
        assert_eq!(bytes, histogram.total_bytes);
    }
});
