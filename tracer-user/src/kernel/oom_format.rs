//! Where `oom:mark_victim`'s fields sit in its record, read from the event's `format` file in
//! tracefs: the record gained the victim's memory counts in Linux 6.2 (before, it held only
//! the pid), and the kernel side reads them at the offsets given here.

use std::path::Path;

/// Offsets of the fields the OOM program reads; 0 for one the record lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OomRecord {
    pub pid: u32,
    pub anon_rss: u32,
    pub file_rss: u32,
    pub shmem_rss: u32,
}

impl Default for OomRecord {
    /// The pid after the common fields, as on every kernel with the event; no memory counts.
    fn default() -> Self {
        Self {
            pid: 8,
            anon_rss: 0,
            file_rss: 0,
            shmem_rss: 0,
        }
    }
}

impl OomRecord {
    /// Reads the format under a mounted tracefs at `tracefs`; the default if it cannot.
    pub fn read(tracefs: &Path) -> Self {
        let path = tracefs.join("events/oom/mark_victim/format");
        std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| Self::parse(&text))
            .unwrap_or_default()
    }

    /// The offsets from a format file: `field:int pid;\toffset:8;\tsize:4;\tsigned:1;`. A
    /// memory count is used only with the 8-byte size the kernel side reads.
    pub fn parse(format: &str) -> Option<Self> {
        let mut record = Self {
            pid: 0,
            ..Self::default()
        };
        for line in format.lines() {
            let mut parts = line.trim().split(';').map(str::trim);
            let (Some(field), Some(offset), Some(size)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Some(name) = field
                .strip_prefix("field:")
                .and_then(|decl| decl.rsplit(' ').next())
            else {
                continue;
            };
            let (Some(offset), Some(size)) = (
                offset
                    .strip_prefix("offset:")
                    .and_then(|v| v.parse::<u32>().ok()),
                size.strip_prefix("size:")
                    .and_then(|v| v.parse::<u32>().ok()),
            ) else {
                continue;
            };
            match (name, size) {
                ("pid", 4) => record.pid = offset,
                ("anon_rss", 8) => record.anon_rss = offset,
                ("file_rss", 8) => record.file_rss = offset,
                ("shmem_rss", 8) => record.shmem_rss = offset,
                _ => {}
            }
        }
        (record.pid != 0).then_some(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux 6.18's format (this machine's).
    const FORMAT_6_18: &str = "name: mark_victim
ID: 609
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] comm;\toffset:12;\tsize:4;\tsigned:0;
\tfield:unsigned long total_vm;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned long anon_rss;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned long file_rss;\toffset:32;\tsize:8;\tsigned:0;
\tfield:unsigned long shmem_rss;\toffset:40;\tsize:8;\tsigned:0;
\tfield:uid_t uid;\toffset:48;\tsize:4;\tsigned:0;
";

    #[test]
    fn offsets_of_linux_6_18() {
        assert_eq!(
            OomRecord::parse(FORMAT_6_18),
            Some(OomRecord {
                pid: 8,
                anon_rss: 24,
                file_rss: 32,
                shmem_rss: 40
            })
        );
    }

    #[test]
    fn an_old_record_has_only_the_pid() {
        let old = "format:\n\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;\n";
        assert_eq!(OomRecord::parse(old), Some(OomRecord::default()));
        assert_eq!(OomRecord::parse("garbage"), None);
    }
}
