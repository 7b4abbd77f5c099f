//! A perf map is written by the target: any bytes. Parsing, the range map, the frames made
//! from names and the names as shown must never panic, and must keep their promises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer_user::{
    jit::perf_map::{PerfMap, frame, parse_line},
    names::{CUT_MARK, MAX_SHOWN_BYTES, folded_frame, shown},
};

fn check_shown(raw: &str) {
    for text in [shown(raw), folded_frame(raw)] {
        assert!(text.len() <= MAX_SHOWN_BYTES + CUT_MARK.len());
        assert!(!text.chars().any(char::is_control), "{text:?}");
    }
    assert!(!folded_frame(raw).contains(';'));
}

fuzz_target!(|data: &[u8]| {
    // leakhound reads the file lossily, as this does.
    let text = String::from_utf8_lossy(data);
    let mut map = PerfMap::default();
    let added = map.add_text(&text);
    let entries: Vec<_> = text.lines().filter_map(parse_line).collect();
    assert_eq!(added, entries.len());
    assert!(map.len() <= entries.len());
    // The last entry replaced whatever it overlapped, so it names its own start (unless its
    // range runs past the end of the address space, where the map cuts it).
    if let Some(last) = entries.last()
        && last.start.checked_add(last.size).is_some()
    {
        assert_eq!(map.lookup(last.start), Some(last.name));
    }
    for entry in &entries {
        let _ = map.lookup(entry.start.saturating_add(entry.size - 1));
        let frame = frame(entry.name);
        check_shown(&frame.name);
        if let Some(file) = &frame.file {
            check_shown(file);
        }
    }
});
