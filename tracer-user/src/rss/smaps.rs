//! `/proc/PID/smaps`: resident and anonymous bytes per mapping.
//!
//! The kernel writes the file, but the target names its own mappings (the files it maps, and
//! `prctl(PR_SET_VMA_ANON_NAME)` names), and it decides how many there are. So the read is
//! bounded, a name is kept only as a short label, and a line is a mapping's header only when
//! its address range and permissions parse (the kernel escapes a newline in a name, so a name
//! cannot start a line of its own).

use std::io::Read;

/// The most read of one smaps file. About 1 KiB per mapping: 32 MiB is 30,000 mappings. The
/// mappings past it are left out of the split, and the split says so.
pub const SMAPS_READ_LIMIT: u64 = 32 << 20;
/// A pseudo name (`[heap]`, `[anon:...]`) is kept up to this many bytes.
const NAME_CAP: usize = 64;

/// One mapping and what of it is in memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    /// `rw-p`, `---p`, ...
    pub perms: [u8; 4],
    /// No file behind it (inode 0 and no path): the heap, stacks, anonymous mmaps.
    pub anonymous: bool,
    /// The kernel's own name (`[heap]`, `[stack]`, `[vdso]`) or an `[anon:...]` name, cut.
    pub pseudo: Option<String>,
    pub rss: u64,
    pub anon: u64,
}

impl Vma {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    pub fn prot_none(&self) -> bool {
        &self.perms[..3] == b"---"
    }
}

/// The smaps of a live process and whether it was cut at [`SMAPS_READ_LIMIT`]; `None` when
/// it cannot be read (the target exited).
pub fn read(pid: u32) -> Option<(Vec<Vma>, bool)> {
    let file = std::fs::File::open(format!("/proc/{pid}/smaps")).ok()?;
    let mut bytes = Vec::new();
    file.take(SMAPS_READ_LIMIT).read_to_end(&mut bytes).ok()?;
    let cut = bytes.len() as u64 == SMAPS_READ_LIMIT;
    let mut vmas = parse(&String::from_utf8_lossy(&bytes));
    if cut {
        // The last mapping's fields may be missing.
        vmas.pop();
    }
    (!vmas.is_empty()).then_some((vmas, cut))
}

pub fn parse(text: &str) -> Vec<Vma> {
    let mut vmas: Vec<Vma> = Vec::new();
    for line in text.lines() {
        if let Some(vma) = header(line) {
            vmas.push(vma);
            continue;
        }
        let Some(vma) = vmas.last_mut() else { continue };
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let kb = || -> Option<u64> {
            value
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<u64>()
                .ok()?
                .checked_mul(1024)
        };
        match key {
            "Rss" => vma.rss = kb().unwrap_or(0),
            "Anonymous" => vma.anon = kb().unwrap_or(0),
            _ => {}
        }
    }
    vmas
}

/// `start-end perms offset dev inode [name]`, or `None` for any other line.
fn header(line: &str) -> Option<Vma> {
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    let perms: [u8; 4] = fields.next()?.as_bytes().try_into().ok()?;
    let _offset = u64::from_str_radix(fields.next()?, 16).ok()?;
    let dev = fields.next()?;
    if !dev.contains(':') || end < start {
        return None;
    }
    let inode: u64 = fields.next()?.parse().ok()?;
    let name = fields.next().unwrap_or("").trim_start();
    let file = inode != 0 || name.starts_with('/');
    let pseudo = (!file && !name.is_empty()).then(|| {
        let mut cut = NAME_CAP.min(name.len());
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name[..cut].to_owned()
    });
    Some(Vma {
        start,
        end,
        perms,
        anonymous: !file,
        pseudo,
        rss: 0,
        anon: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mappings_and_their_sizes() {
        let text = "\
55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0                          [heap]\n\
Size:                132 kB\n\
Rss:                   8 kB\n\
Anonymous:             8 kB\n\
7f0000000000-7f0000400000 r-xp 00001000 08:01 4242   /usr/lib/libc.so.6\n\
Rss:                1024 kB\n\
Anonymous:             0 kB\n\
7f0001000000-7f0001100000 ---p 00000000 00:00 0 \n\
Rss:                   0 kB\n\
7f0002000000-7f0002001000 rw-p 00000000 00:00 0  [anon:Rss: 999 kB]\n\
Rss:                   4 kB\n\
Anonymous:             4 kB\n\
VmFlags: rd wr mr mw me ac sd\n";
        let vmas = parse(text);
        assert_eq!(vmas.len(), 4);
        assert_eq!(vmas[0].pseudo.as_deref(), Some("[heap]"));
        assert_eq!((vmas[0].rss, vmas[0].anon), (8192, 8192));
        assert!(!vmas[1].anonymous && vmas[1].pseudo.is_none());
        assert_eq!(vmas[1].rss, 1 << 20);
        assert!(vmas[2].anonymous && vmas[2].prot_none());
        // A name that looks like a field is only a name.
        assert_eq!(vmas[3].pseudo.as_deref(), Some("[anon:Rss: 999 kB]"));
        assert_eq!(vmas[3].rss, 4096);
    }

    #[test]
    fn long_names_are_cut_and_odd_lines_skipped() {
        let long = "é".repeat(100);
        let text = format!(
            "garbage\nRss: 5 kB\n1000-2000 rw-p 00000000 00:00 0 [anon:{long}]\nRss: 99999999999999999999 kB\n"
        );
        let vmas = parse(&text);
        assert_eq!(vmas.len(), 1);
        assert!(vmas[0].pseudo.as_ref().unwrap().len() <= NAME_CAP);
        assert_eq!(vmas[0].rss, 0);
    }
}
