//! Reading a pushed profile back with `go tool pprof` (Debian's golang-go), as a store would.

use std::path::Path;
use std::process::Command;

/// `go tool pprof -traces` of one sample type, as folded stacks (`root;...;leaf VALUE`).
pub fn pprof_folded(profile: &Path, sample_index: &str) -> String {
    let out = Command::new("go")
        .args([
            "tool",
            "pprof",
            "-traces",
            "-unit=byte",
            &format!("-sample_index={sample_index}"),
        ])
        .arg(profile)
        .env("HOME", profile.parent().expect("a directory"))
        .output()
        .expect("go tool pprof runs (Debian's golang-go)");
    assert!(
        out.status.success(),
        "go tool pprof: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut folded = String::new();
    // Blocks between dashed lines: label lines (`origin:  malloc`), then `VALUE leaf`, then
    // one frame a line, leaf first.
    let mut blocks: Vec<Vec<&str>> = vec![Vec::new()];
    for line in text.lines() {
        if line.starts_with("---") && line.contains('+') {
            blocks.push(Vec::new());
        } else if let Some(block) = blocks.last_mut() {
            block.push(line.trim());
        }
    }
    for block in &blocks {
        let mut lines = block
            .iter()
            .filter(|line| !line.is_empty())
            .skip_while(|line| parse_value(line.split_whitespace().next().unwrap_or("")).is_none());
        let Some(first) = lines.next() else { continue };
        // A frame is the whole line: names may hold spaces (`operator new`, a JavaScript
        // function's `(anonymous file.js:28)`).
        let Some((value, leaf)) = first.split_once(char::is_whitespace) else {
            continue;
        };
        let Some(value) = parse_value(value) else {
            continue;
        };
        let mut frames = vec![leaf.trim().to_owned()];
        frames.extend(lines.map(|line| (*line).to_owned()));
        frames.reverse();
        folded.push_str(&format!("{} {value}\n", frames.join(";")));
    }
    folded
}

/// A value as `-unit=byte` prints it: `3145728B`.
pub fn parse_value(text: &str) -> Option<u64> {
    text.strip_suffix('B')?.parse().ok()
}
