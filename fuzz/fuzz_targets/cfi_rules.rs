//! Unwind rules are derived from the CFI of files the target maps: any bytes. Parsing the ELF
//! image and its .eh_frame must never panic, at any file offset.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer_user::unwind::rules_in_image;

fuzz_target!(|data: &[u8]| {
    // Offsets spread over the image, and past its end.
    let len = data.len() as u64;
    let step = (len / 32).max(1);
    let mut offsets: Vec<u64> = (0..=len + 1).step_by(step as usize).collect();
    offsets.push(u64::MAX);
    let rules = rules_in_image(data, &offsets);
    assert_eq!(rules.len(), offsets.len());
});
