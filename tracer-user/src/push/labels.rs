//! The labels a pushed profile carries: the service name, the host, the pid, and the
//! container and pod where the target's cgroup path says (Docker, containerd, CRI-O and
//! Kubernetes' `kubepods` layouts, cgroupfs or systemd), with the pod's name from the
//! target's `HOSTNAME`, which Kubernetes sets to it.
//!
//! Everything here but the host comes from the target, so every value is cut to a safe
//! alphabet and length: Pyroscope's name syntax (`svc{k=v,...}`) has no escapes.

use std::io::Read as _;

/// At most this much of `/proc/PID/cgroup` or `/proc/PID/environ` is read.
const READ_LIMIT: u64 = 64 << 10;
/// Label values are cut here.
const MAX_VALUE: usize = 128;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labels {
    pub service: String,
    /// Further labels, in order.
    pub pairs: Vec<(String, String)>,
}

impl Labels {
    /// The labels of process `pid`, named `service` (else its command name).
    pub fn of(pid: u32, service: Option<&str>, command: &str) -> Self {
        let read = |file: &str| {
            let mut bytes = Vec::new();
            std::fs::File::open(format!("/proc/{pid}/{file}"))
                .and_then(|f| f.take(READ_LIMIT).read_to_end(&mut bytes))
                .ok()
                .map(|_| bytes)
        };
        let cgroup = read("cgroup").map(|b| String::from_utf8_lossy(&b).into_owned());
        let hostname = read("environ").and_then(|environ| {
            environ
                .split(|&b| b == 0)
                .find_map(|var| var.strip_prefix(b"HOSTNAME="))
                .map(|value| String::from_utf8_lossy(value).into_owned())
        });
        let host = std::env::var("NODE_NAME").ok().or_else(own_hostname);
        // The program's file name: `/usr/bin/api --port 80` is the service `api`.
        let program = command.split_whitespace().next().unwrap_or(command);
        let program = program.rsplit('/').next().unwrap_or(program);
        Self::from_parts(
            service.unwrap_or(program),
            host.as_deref(),
            pid,
            cgroup.as_deref().unwrap_or(""),
            hostname.as_deref(),
        )
    }

    pub fn from_parts(
        service: &str,
        host: Option<&str>,
        pid: u32,
        cgroup: &str,
        target_hostname: Option<&str>,
    ) -> Self {
        let mut pairs = Vec::new();
        if let Some(host) = host {
            pairs.push(("host".to_owned(), clean(host)));
        }
        pairs.push(("pid".to_owned(), pid.to_string()));
        let ids = ContainerIds::from_cgroup(cgroup);
        if let Some(container) = ids.container {
            pairs.push(("container_id".to_owned(), container));
        }
        if let Some(pod) = ids.pod_uid {
            pairs.push(("pod_uid".to_owned(), pod));
            if let Some(name) = target_hostname {
                pairs.push(("pod".to_owned(), clean(name)));
            }
        }
        let service = clean(service);
        Self {
            service: if service.is_empty() {
                "unknown".to_owned()
            } else {
                service
            },
            pairs,
        }
    }

    /// `service{k=v,...}`, as Pyroscope's `name` parameter takes it.
    pub fn pyroscope_name(&self) -> String {
        let pairs: Vec<String> = self.pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{}{{{}}}", self.service, pairs.join(","))
    }
}

/// The container id in `/proc/PID/cgroup`'s text, where its layout shows one (the agent's
/// `--container` selector).
pub fn container_id(cgroup: &str) -> Option<String> {
    ContainerIds::from_cgroup(cgroup).container
}

/// A container id and a pod's uid, read from a cgroup path.
#[derive(Debug, Default, PartialEq, Eq)]
struct ContainerIds {
    container: Option<String>,
    pod_uid: Option<String>,
}

impl ContainerIds {
    fn from_cgroup(cgroup: &str) -> Self {
        let mut ids = Self::default();
        // Any hierarchy's path will do; they name the same container.
        for path in cgroup.lines().filter_map(|line| line.splitn(3, ':').nth(2)) {
            for part in path.split('/') {
                let part = part.trim_end_matches(".slice").trim_end_matches(".scope");
                // cgroupfs: `pod<uid>`; systemd: `kubepods-burstable-pod<uid with _>`.
                if let Some((_, uid)) = part.rsplit_once("pod")
                    && part.contains("kubepods") | part.starts_with("pod")
                    && uid.len() >= 32
                {
                    ids.pod_uid = Some(clean(&uid.replace('_', "-")));
                }
                // `<64 hex>`, `docker-<64 hex>`, `cri-containerd-<64 hex>`, `crio-<64 hex>`.
                let last = part.rsplit('-').next().unwrap_or(part);
                if last.len() == 64 && last.bytes().all(|b| b.is_ascii_hexdigit()) {
                    ids.container = Some(last.to_owned());
                }
            }
        }
        ids
    }
}

/// Letters, digits and `._-:` kept, anything else `_`, at most [`MAX_VALUE`] characters.
fn clean(value: &str) -> String {
    value
        .chars()
        .take(MAX_VALUE)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-:".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn own_hostname() -> Option<String> {
    let mut name = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer it is given.
    let rc = unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) };
    if rc != 0 {
        return None;
    }
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Some(String::from_utf8_lossy(&name[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4b9d1e6a7c8b2d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f";

    #[test]
    fn kubernetes_cgroupfs_layout() {
        let cgroup =
            format!("12:memory:/kubepods/burstable/pod0a1b2c3d-1111-2222-3333-444455556666/{ID}\n");
        let labels = Labels::from_parts("api", Some("node-1"), 7, &cgroup, Some("api-7d9f-xk2p"));
        assert_eq!(
            labels.pyroscope_name(),
            format!(
                "api{{host=node-1,pid=7,container_id={ID},pod_uid=0a1b2c3d-1111-2222-3333-444455556666,pod=api-7d9f-xk2p}}"
            )
        );
    }

    #[test]
    fn systemd_and_docker_layouts() {
        let systemd = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0a1b2c3d_1111_2222_3333_444455556666.slice/cri-containerd-{ID}.scope\n"
        );
        let ids = ContainerIds::from_cgroup(&systemd);
        assert_eq!(ids.container.as_deref(), Some(ID));
        assert_eq!(
            ids.pod_uid.as_deref(),
            Some("0a1b2c3d-1111-2222-3333-444455556666")
        );
        let docker = ContainerIds::from_cgroup(&format!("0::/system.slice/docker-{ID}.scope\n"));
        assert_eq!(docker.container.as_deref(), Some(ID));
        assert_eq!(docker.pod_uid, None);
        assert_eq!(
            ContainerIds::from_cgroup("0::/user.slice/session-2.scope\n"),
            ContainerIds::default()
        );
    }

    #[test]
    fn values_from_the_target_cannot_break_the_name() {
        let labels = Labels::from_parts("a{b=c,d}", None, 1, "", None);
        assert_eq!(labels.pyroscope_name(), "a_b_c_d_{pid=1}");
        assert_eq!(Labels::from_parts("", None, 1, "", None).service, "unknown");
    }
}
