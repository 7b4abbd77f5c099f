//! A saved recording may be crafted. Reading it must refuse or accept, never panic or abort,
//! and whatever it accepts every format must render.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer_user::report::{Format, Report, read_recording};

const FORMATS: [Format; 7] = [
    Format::Text,
    Format::Folded,
    Format::Json,
    Format::Pprof,
    Format::Diff,
    Format::Recording,
    Format::Svg,
];

fuzz_target!(|data: &[u8]| {
    let Ok(recording) = read_recording(data) else {
        return;
    };
    let report = Report::new(&recording);
    for format in FORMATS {
        let mut out = Vec::new();
        format
            .renderer(20)
            .render(&report, &mut out)
            .expect("rendering into memory cannot fail");
    }
    // And a recording compared with itself.
    let mut out = Vec::new();
    Format::Diff
        .renderer(20)
        .render(&Report::compared(&recording, &recording), &mut out)
        .expect("rendering into memory cannot fail");
});
