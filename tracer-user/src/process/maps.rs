//! `/proc/PID/maps`, parsed into plain data.

use std::path::PathBuf;

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub readable: bool,
    pub executable: bool,
    /// File offset of `start`.
    pub offset: u64,
    pub inode: u64,
    /// The backing file as the target sees it; `None` for anonymous memory and pseudo
    /// mappings such as `[heap]` and `[vdso]` (see `pseudo`).
    pub path: Option<PathBuf>,
    /// `[heap]`, `[stack]`, `[vdso]`, ... when the kernel names the mapping itself.
    pub pseudo: Option<String>,
    /// The file was replaced or removed after it was mapped.
    pub deleted: bool,
}

impl Mapping {
    pub fn contains(&self, addr: u64) -> bool {
        (self.start..self.end).contains(&addr)
    }

    /// The file offset of an address inside this mapping.
    pub fn file_offset(&self, addr: u64) -> u64 {
        addr - self.start + self.offset
    }
}

/// Parses the text of `/proc/PID/maps`. Malformed lines are skipped: the file is the kernel's,
/// and one odd line must not hide every other mapping.
pub fn parse(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    // address perms offset dev inode pathname; the pathname may contain spaces.
    let mut rest = line;
    let mut field = || {
        let trimmed = rest.trim_start();
        let end = trimmed.find(' ').unwrap_or(trimmed.len());
        let (head, tail) = trimmed.split_at(end);
        rest = tail;
        head
    };
    let range = field();
    let perms = field().as_bytes();
    let offset = u64::from_str_radix(field(), 16).ok()?;
    let _dev = field();
    let inode = field().parse().ok()?;
    let name = rest.trim_start();

    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    if perms.len() < 4 || end < start {
        return None;
    }

    let (name, deleted) = match name.strip_suffix(" (deleted)") {
        Some(name) => (name, true),
        None => (name, false),
    };
    let (path, pseudo) = if name.starts_with('/') {
        (Some(PathBuf::from(name)), None)
    } else if name.is_empty() {
        (None, None)
    } else {
        (None, Some(name.to_owned()))
    };
    Some(Mapping {
        start,
        end,
        readable: perms[0] == b'r',
        executable: perms[2] == b'x',
        offset,
        inode,
        path,
        pseudo,
        deleted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 1234   /usr/bin/demo
55d0c0a01000-55d0c0a02000 r-xp 00001000 fe:01 1234   /usr/bin/demo
55d0c1000000-55d0c1021000 rw-p 00000000 00:00 0      [heap]
7f0000000000-7f0000021000 rw-p 00000000 00:00 0 
7f1000028000-7f10001bd000 r-xp 00028000 fe:01 5678   /usr/lib/x86_64-linux-gnu/libc.so.6
7f2000000000-7f2000001000 r-xp 00000000 fe:01 9999   /tmp/dir with space/lib.so (deleted)
garbage line
";

    #[test]
    fn parses_files_pseudo_and_anonymous_mappings() {
        let maps = parse(SAMPLE);
        assert_eq!(maps.len(), 6);
        assert_eq!(maps[1].path.as_deref(), Some("/usr/bin/demo".as_ref()));
        assert!(maps[1].executable && maps[1].readable);
        assert_eq!(maps[1].offset, 0x1000);
        assert_eq!(maps[2].pseudo.as_deref(), Some("[heap]"));
        assert_eq!(
            (maps[3].path.as_ref(), maps[3].pseudo.as_ref()),
            (None, None)
        );
        assert_eq!(maps[4].file_offset(0x7f1000028010), 0x28010);
        assert_eq!(
            maps[5].path.as_deref(),
            Some("/tmp/dir with space/lib.so".as_ref())
        );
        assert!(maps[5].deleted);
    }
}
