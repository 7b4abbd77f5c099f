//! Which processes the agent traces: a command-line regex, a cgroup (a path and what is below
//! it, or a part of the path), a container id (or its prefix, as `docker ps` shows 12). Every
//! selector given must match. The command line and the cgroup path are the process's own
//! text, so they are only matched, never used as paths.

use regex::Regex;

use crate::push::labels::container_id;

#[derive(Clone, Debug)]
pub struct Selector {
    pub cmdline: Option<Regex>,
    pub cgroup: Option<String>,
    pub container: Option<String>,
}

/// What a process shows of itself, as read from `/proc/PID` (bounded).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// The arguments joined by spaces.
    pub cmdline: String,
    /// `/proc/PID/cgroup` as it reads.
    pub cgroup: String,
}

impl Selector {
    /// At least one selector, or an error saying so; a regex that does not compile is refused.
    pub fn new(
        cmdline: Option<&str>,
        cgroup: Option<String>,
        container: Option<String>,
    ) -> Result<Self, String> {
        if cmdline.is_none() && cgroup.is_none() && container.is_none() {
            return Err(
                "give at least one of --match-cmdline, --cgroup and --container".to_owned(),
            );
        }
        let cmdline = cmdline
            .map(Regex::new)
            .transpose()
            .map_err(|err| format!("--match-cmdline: {err}"))?;
        if let Some(id) = &container
            && (id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(format!(
                "--container '{id}' is not a container id or its start (hexadecimal digits)"
            ));
        }
        Ok(Self {
            cmdline,
            cgroup: cgroup.filter(|c| !c.is_empty()),
            container: container.map(|id| id.to_ascii_lowercase()),
        })
    }

    pub fn matches(&self, seen: &Seen) -> bool {
        // Kernel threads have no command line and no user memory to trace.
        if seen.cmdline.is_empty() {
            return false;
        }
        if let Some(regex) = &self.cmdline
            && !regex.is_match(&seen.cmdline)
        {
            return false;
        }
        if let Some(wanted) = &self.cgroup
            && !cgroup_paths(&seen.cgroup).any(|path| cgroup_matches(wanted, path))
        {
            return false;
        }
        if let Some(prefix) = &self.container
            && !container_id(&seen.cgroup).is_some_and(|id| id.starts_with(prefix.as_str()))
        {
            return false;
        }
        true
    }
}

/// The paths of `/proc/PID/cgroup`'s lines (`ID:CONTROLLERS:PATH`).
fn cgroup_paths(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter_map(|line| line.splitn(3, ':').nth(2))
}

/// `/kubepods/burstable` selects that cgroup and every one below it; a selector that does not
/// start with `/` is a part of the path (`kubepods-besteffort`, a pod's uid).
fn cgroup_matches(wanted: &str, path: &str) -> bool {
    if wanted.starts_with('/') {
        let wanted = wanted.trim_end_matches('/');
        path.strip_prefix(wanted)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            || wanted.is_empty()
    } else {
        path.contains(wanted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4b9d1e6a7c8b2d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f";

    fn seen(cmdline: &str, cgroup: &str) -> Seen {
        Seen {
            cmdline: cmdline.to_owned(),
            cgroup: cgroup.to_owned(),
        }
    }

    #[test]
    fn every_selector_given_must_match() {
        let pod = format!(
            "12:memory:/kubepods/burstable/pod0a1b2c3d-1111-2222-3333-444455556666/{ID}\n0::/\n"
        );
        let selector = Selector::new(Some(r"^/usr/bin/api\b"), None, None).unwrap();
        assert!(selector.matches(&seen("/usr/bin/api --port 80", "")));
        assert!(!selector.matches(&seen("/usr/bin/apish", "")));
        let selector = Selector::new(
            Some("api"),
            Some("/kubepods/burstable".to_owned()),
            Some(ID[..12].to_uppercase()),
        )
        .unwrap();
        assert!(selector.matches(&seen("api", &pod)));
        assert!(!selector.matches(&seen("web", &pod)));
        assert!(!selector.matches(&seen("api", "0::/user.slice\n")));
        // A path selector matches whole components; a bare word is a part of the path.
        let path = Selector::new(None, Some("/kubepods/burst".to_owned()), None).unwrap();
        assert!(!path.matches(&seen("api", &pod)));
        let part = Selector::new(None, Some("burst".to_owned()), None).unwrap();
        assert!(part.matches(&seen("api", &pod)));
        let other = Selector::new(None, None, Some("abcdef012345".to_owned())).unwrap();
        assert!(!other.matches(&seen("api", &pod)));
    }

    #[test]
    fn kernel_threads_and_bad_selectors_are_refused() {
        let any = Selector::new(Some(""), None, None).unwrap();
        assert!(!any.matches(&seen("", "0::/\n")));
        assert!(Selector::new(None, None, None).is_err());
        assert!(Selector::new(Some("("), None, None).is_err());
        assert!(Selector::new(None, None, Some("../etc".to_owned())).is_err());
    }
}
