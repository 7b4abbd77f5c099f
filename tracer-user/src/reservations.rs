//! Anonymous address space that the target reserved with `PROT_NONE`, in which `mprotect`
//! commits memory: V8's heap, glibc's thread stacks, and anything else reserved and then
//! opened page by page.
//!
//! A set of page ranges, merged. Reservations come from the kernel's mapping events (an
//! anonymous `PROT_NONE` mmap) and, for a process attached by PID, from `/proc/PID/maps` at
//! attach (anonymous `---p` mappings), since V8 and the JVM reserve their heaps at start-up.

use std::{collections::BTreeMap, io::Read};

/// `/proc/PID/maps` of a process near `vm.max_map_count` (65,530) with long names is a few
/// MiB; a read stops here, and the reservations past it are simply not known.
pub const MAPS_READ_LIMIT: u64 = 16 << 20;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reservations {
    /// start -> end, disjoint and not touching (touching ranges are merged).
    by_start: BTreeMap<u64, u64>,
}

impl Reservations {
    pub fn add(&mut self, start: u64, end: u64) {
        if end <= start {
            return;
        }
        let (mut start, mut end) = (start, end);
        // Merge with every range that overlaps or touches [start, end].
        let touching: Vec<(u64, u64)> = self
            .by_start
            .range(..=end)
            .rev()
            .take_while(|(_, e)| **e >= start)
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in touching {
            self.by_start.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.by_start.insert(start, end);
    }

    /// Removes [start, end); returns the bytes that were reserved in it.
    pub fn remove(&mut self, start: u64, end: u64) -> u64 {
        let parts = self.within(start, end);
        if parts.is_empty() {
            return 0;
        }
        let mut removed = 0;
        for (s, e) in &parts {
            removed += e - s;
        }
        // Ranges that overlap: trim the first and the last, drop the rest.
        let overlapping: Vec<(u64, u64)> = self
            .by_start
            .range(..end)
            .rev()
            .take_while(|(_, e)| **e > start)
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in overlapping {
            self.by_start.remove(&s);
            if s < start {
                self.by_start.insert(s, start);
            }
            if e > end {
                self.by_start.insert(end, e);
            }
        }
        removed
    }

    /// The reserved parts of [start, end), in address order.
    pub fn within(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        if end <= start {
            return Vec::new();
        }
        let first = self
            .by_start
            .range(..=start)
            .next_back()
            .filter(|(_, e)| **e > start)
            .map(|(s, _)| *s)
            .unwrap_or(start);
        self.by_start
            .range(first..end)
            .map(|(s, e)| ((*s).max(start), (*e).min(end)))
            .filter(|(s, e)| s < e)
            .collect()
    }

    pub fn bytes(&self) -> u64 {
        self.by_start.iter().map(|(s, e)| e - s).sum()
    }
}

/// The anonymous `PROT_NONE` mappings in the text of `/proc/PID/maps`: perms `---p` and
/// inode 0 (a file mapping, even one named like `[anon:x]`, has an inode). Malformed lines
/// are skipped.
pub fn reserved_in_maps(text: &str) -> Reservations {
    let mut reserved = Reservations::default();
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(range), Some(perms), Some(_offset), Some(_dev), Some(inode)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        if perms != "---p" || inode != "0" {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        if let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        {
            reserved.add(start, end);
        }
    }
    reserved
}

/// The reservations of a live process, from its `/proc/PID/maps` (read up to
/// [`MAPS_READ_LIMIT`]); empty when it cannot be read.
pub fn reserved_at_attach(pid: u32) -> Reservations {
    let Ok(file) = std::fs::File::open(format!("/proc/{pid}/maps")) else {
        return Reservations::default();
    };
    let mut bytes = Vec::new();
    if file.take(MAPS_READ_LIMIT).read_to_end(&mut bytes).is_err() {
        return Reservations::default();
    }
    // A cut last line is dropped by the parser only if malformed; drop it always.
    if bytes.len() as u64 == MAPS_READ_LIMIT
        && let Some(nl) = bytes.iter().rposition(|b| *b == b'\n')
    {
        bytes.truncate(nl + 1);
    }
    reserved_in_maps(&String::from_utf8_lossy(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(r: &Reservations) -> Vec<(u64, u64)> {
        r.by_start.iter().map(|(s, e)| (*s, *e)).collect()
    }

    #[test]
    fn adds_merge_and_removes_split() {
        let mut r = Reservations::default();
        r.add(0x10000, 0x20000);
        r.add(0x20000, 0x30000); // touching
        r.add(0x50000, 0x60000);
        assert_eq!(ranges(&r), [(0x10000, 0x30000), (0x50000, 0x60000)]);
        r.add(0x28000, 0x52000); // bridges both
        assert_eq!(ranges(&r), [(0x10000, 0x60000)]);
        assert_eq!(r.remove(0x18000, 0x1a000), 0x2000);
        assert_eq!(ranges(&r), [(0x10000, 0x18000), (0x1a000, 0x60000)]);
        assert_eq!(
            r.within(0x17000, 0x1b000),
            [(0x17000, 0x18000), (0x1a000, 0x1b000)]
        );
        assert_eq!(r.remove(0x0, 0x100000), 0x4e000);
        assert_eq!(r.bytes(), 0);
        assert!(r.within(0, u64::MAX).is_empty());
    }

    #[test]
    fn maps_give_only_anonymous_prot_none() {
        let text = "\
7f0000000000-7f0000100000 ---p 00000000 00:00 0 \n\
7f0000100000-7f0000200000 rw-p 00000000 00:00 0 \n\
7f0000200000-7f0000201000 ---p 00000000 08:01 1234 /usr/lib/libc.so.6\n\
7f0000300000-7f0000301000 ---p 00000000 08:01 99 [anon:not really]\n\
7f0000400000-7f0000500000 ---p 00000000 00:00 0 [anon:v8 cage]\n\
garbage line\n\
7f0000600000-7f00005 ---p 00000000 00:00 0\n";
        assert_eq!(
            ranges(&reserved_in_maps(text)),
            [
                (0x7f00_0000_0000, 0x7f00_0010_0000),
                (0x7f00_0040_0000, 0x7f00_0050_0000)
            ]
        );
    }
}
