//! The target's memory cgroup: its limit and usage, read beside RSS and at an OOM kill, where
//! the limit is what the kernel enforced.
//!
//! On cgroup v1 (this machine kind mounts the v1 controllers) the memory controller's own
//! hierarchy holds `memory.limit_in_bytes` and `memory.usage_in_bytes`; on v2 the unified
//! hierarchy holds `memory.max` and `memory.current`. The cgroup is found from
//! `/proc/PID/cgroup` (the path inside leakhound's cgroup namespace) and leakhound's own
//! `/proc/self/mountinfo` (where that hierarchy is mounted, and which part of it), so it works
//! in a debug pod that mounts the cgroup file system at a place of its own or not at all (then
//! there is nothing to show). The file in `/proc` is the kernel's, but cgroup names are chosen
//! by whoever made them, a container perhaps: a path with `..` or other oddities is refused.

use std::{
    fs,
    io::Read as _,
    path::{Component, Path, PathBuf},
};

/// At most this much of `/proc/PID/cgroup` or `/proc/self/mountinfo` is read.
const READ_LIMIT: u64 = 1 << 20;

/// The cgroup version whose files are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// The target's memory cgroup directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupMemory {
    pub dir: PathBuf,
    pub version: Version,
}

/// One reading of the cgroup's files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CgroupReading {
    /// The limit in bytes, or `None` when there is none (`max`, or v1's page-counter maximum).
    pub limit: Option<u64>,
    pub usage: Option<u64>,
}

impl CgroupMemory {
    /// The memory cgroup of `pid`, where one is mounted for leakhound to read.
    pub fn of(pid: u32) -> Option<Self> {
        let cgroups = read_bounded(Path::new(&format!("/proc/{pid}/cgroup")))?;
        let mountinfo = read_bounded(Path::new("/proc/self/mountinfo"))?;
        let found = locate(&cgroups, &mountinfo)?;
        let probe = match found.version {
            Version::V1 => "memory.limit_in_bytes",
            Version::V2 => "memory.max",
        };
        // A v2 hierarchy without the memory controller enabled has no such file.
        found.dir.join(probe).is_file().then_some(found)
    }

    /// The limit file's name, for the report.
    pub fn limit_file(&self) -> PathBuf {
        self.dir.join(match self.version {
            Version::V1 => "memory.limit_in_bytes",
            Version::V2 => "memory.max",
        })
    }

    pub fn read(&self) -> CgroupReading {
        let (limit, usage) = match self.version {
            Version::V1 => ("memory.limit_in_bytes", "memory.usage_in_bytes"),
            Version::V2 => ("memory.max", "memory.current"),
        };
        let value = |name: &str| {
            read_bounded(&self.dir.join(name)).and_then(|text| parse_value(text.trim()))
        };
        CgroupReading {
            limit: value(limit).flatten(),
            usage: value(usage).flatten(),
        }
    }
}

impl CgroupReading {
    /// The reading as the reports show it: none without a usage to show.
    pub fn usage(&self) -> Option<crate::model::CgroupUse> {
        Some(crate::model::CgroupUse {
            usage_bytes: self.usage?,
            limit_bytes: self.limit,
        })
    }
}

/// A number, `max` (no limit: `Some(None)`), or nothing readable (`None`). v1 reports no limit
/// as the page counter's maximum, about 2^63 rounded down to a page.
fn parse_value(text: &str) -> Option<Option<u64>> {
    if text == "max" {
        return Some(None);
    }
    let value: u64 = text.parse().ok()?;
    Some((value < 1 << 62).then_some(value))
}

/// The memory cgroup's directory from `/proc/PID/cgroup` and `/proc/self/mountinfo`: the v1
/// memory hierarchy if one is mounted, else the v2 one.
fn locate(cgroups: &str, mountinfo: &str) -> Option<CgroupMemory> {
    let mut v1 = None;
    let mut v2 = None;
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            v2 = Some(path);
        } else if controllers.split(',').any(|c| c == "memory") {
            v1 = Some(path);
        }
    }
    let mounts: Vec<Mount<'_>> = mountinfo.lines().filter_map(Mount::parse).collect();
    let v1_mount = mounts.iter().find(|mount| {
        mount.fstype == "cgroup" && mount.super_options.split(',').any(|o| o == "memory")
    });
    if let (Some(path), Some(mount)) = (v1, v1_mount)
        && let Some(dir) = mount.resolve(path)
    {
        return Some(CgroupMemory {
            dir,
            version: Version::V1,
        });
    }
    let v2_mount = mounts.iter().find(|mount| mount.fstype == "cgroup2")?;
    Some(CgroupMemory {
        dir: v2_mount.resolve(v2?)?,
        version: Version::V2,
    })
}

/// The fields of a mountinfo line that matter here (proc(5)).
struct Mount<'a> {
    /// The directory of the file system mounted here (a cgroup's path, for a cgroup mount).
    root: &'a str,
    point: &'a str,
    fstype: &'a str,
    super_options: &'a str,
}

impl<'a> Mount<'a> {
    fn parse(line: &'a str) -> Option<Self> {
        let (before, after) = line.split_once(" - ")?;
        let mut before = before.split(' ');
        let root = before.nth(3)?;
        let point = before.next()?;
        let mut after = after.split(' ');
        let fstype = after.next()?;
        let super_options = after.nth(1)?;
        Some(Self {
            root,
            point,
            fstype,
            super_options,
        })
    }

    /// Where the cgroup `path` (as /proc/PID/cgroup names it) is under this mount. Paths with
    /// escapes (mountinfo writes a space as `\040`) or that climb out are refused.
    fn resolve(&self, path: &str) -> Option<PathBuf> {
        let relative = if self.root == "/" {
            path
        } else {
            path.strip_prefix(self.root)
                .filter(|rest| rest.is_empty() || rest.starts_with('/'))?
        };
        let clean = |text: &str| {
            !text.contains('\\')
                && Path::new(text)
                    .components()
                    .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        };
        if !path.starts_with('/') || !clean(relative) || !clean(self.point) {
            return None;
        }
        Some(Path::new(self.point).join(relative.trim_start_matches('/')))
    }
}

fn read_bounded(path: &Path) -> Option<String> {
    let mut text = String::new();
    fs::File::open(path)
        .ok()?
        .take(READ_LIMIT)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
24 30 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw
33 24 0:28 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
34 33 0:29 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
40 33 0:35 / /sys/fs/cgroup/memory rw,nosuid shared:16 - cgroup cgroup rw,memory
41 33 0:36 / /sys/fs/cgroup/cpu,cpuacct rw shared:17 - cgroup cgroup rw,cpu,cpuacct";

    #[test]
    fn v1_memory_hierarchy_first() {
        let cgroups = "12:memory:/lh-oom\n4:cpu,cpuacct:/\n0::/user.slice\n";
        assert_eq!(
            locate(cgroups, MOUNTINFO),
            Some(CgroupMemory {
                dir: PathBuf::from("/sys/fs/cgroup/memory/lh-oom"),
                version: Version::V1
            })
        );
    }

    #[test]
    fn v2_alone() {
        let mountinfo = "30 1 0:26 / /sys/fs/cgroup rw shared:4 - cgroup2 cgroup2 rw";
        assert_eq!(
            locate("0::/kubepods/pod1/abc\n", mountinfo),
            Some(CgroupMemory {
                dir: PathBuf::from("/sys/fs/cgroup/kubepods/pod1/abc"),
                version: Version::V2
            })
        );
    }

    #[test]
    fn a_mount_of_a_subtree_strips_its_root() {
        // A container's own view: the pod's cgroup mounted at /sys/fs/cgroup.
        let mountinfo = "30 1 0:26 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw";
        let found = locate("0::/kubepods/pod1/app\n", mountinfo).unwrap();
        assert_eq!(found.dir, PathBuf::from("/sys/fs/cgroup/app"));
        assert_eq!(locate("0::/kubepods/pod10/app\n", mountinfo), None);
    }

    #[test]
    fn climbing_paths_are_refused() {
        assert_eq!(locate("12:memory:/../../etc\n", MOUNTINFO), None);
        assert_eq!(locate("12:memory:relative\n", MOUNTINFO), None);
        assert_eq!(locate("", MOUNTINFO), None);
    }

    #[test]
    fn values() {
        assert_eq!(parse_value("67108864"), Some(Some(67_108_864)));
        assert_eq!(parse_value("max"), Some(None));
        assert_eq!(parse_value("9223372036854771712"), Some(None));
        assert_eq!(parse_value("x"), None);
    }
}
