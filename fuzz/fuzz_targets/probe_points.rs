//! Where each probe goes is read from the code of files the target maps: any bytes. Finding
//! the hook points (the symbols, the emulated point past an entry, the point after a mapping
//! wrapper's `syscall`) must never panic, and every point must lie past its function's start.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer_user::process::elf::hook_points_in;

fuzz_target!(|data: &[u8]| {
    // A prefix of its own as well, as `--alloc-lib PATH:PREFIX` gives one.
    if let Ok(points) = hook_points_in(data, Some("my_")) {
        for point in points {
            assert!(point.file_offset >= point.skip, "{point:?}");
        }
    }
});
