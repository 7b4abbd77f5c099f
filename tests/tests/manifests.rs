//! The Kubernetes manifests under deploy/: each parses, grants exactly the capabilities
//! leakhound needs (README, Privileges) and says why, runs the image's binary with options it
//! accepts, and shares the PID namespace it must.

use std::path::{Path, PathBuf};
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

/// What `leakhound record --pid` needs, as the README's Privileges table says.
const CAPABILITIES: [&str; 4] = ["BPF", "PERFMON", "SYS_PTRACE", "SYS_ADMIN"];

fn manifests() -> Vec<(PathBuf, String)> {
    let dir = tests::paths::workspace().join("deploy");
    let mut found: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("readable");
            (path, text)
        })
        .collect();
    found.sort();
    assert!(found.len() >= 2, "the manifests under {}", dir.display());
    found
}

/// The container specs of a document: a Pod's or a workload template's containers, or the
/// document itself for a `kubectl debug --custom` partial container spec.
fn containers(doc: &Yaml) -> Vec<&Yaml> {
    let spec = match doc["kind"].as_str() {
        Some("Pod") => &doc["spec"],
        Some("DaemonSet" | "Deployment") => &doc["spec"]["template"]["spec"],
        Some(other) => panic!("unexpected kind {other}"),
        None => return vec![doc],
    };
    spec["containers"]
        .as_vec()
        .expect("containers")
        .iter()
        .collect()
}

fn strings(list: &Yaml) -> Vec<&str> {
    list.as_vec()
        .map(|items| items.iter().filter_map(Yaml::as_str).collect())
        .unwrap_or_default()
}

fn check_container(file: &Path, container: &Yaml) {
    let security = &container["securityContext"];
    let added = strings(&security["capabilities"]["add"]);
    let mut sorted = added.clone();
    sorted.sort_unstable();
    let mut needed = CAPABILITIES.to_vec();
    needed.sort_unstable();
    assert_eq!(
        sorted,
        needed,
        "{}: exactly the capabilities needed",
        file.display()
    );
    assert_eq!(
        strings(&security["capabilities"]["drop"]),
        ["ALL"],
        "{}: every other capability dropped",
        file.display()
    );
    assert_eq!(
        security["privileged"].as_bool(),
        Some(false),
        "{}",
        file.display()
    );
    assert_eq!(
        security["runAsUser"].as_i64(),
        Some(0),
        "{}: capabilities need uid 0",
        file.display()
    );
    assert_eq!(
        security["readOnlyRootFilesystem"].as_bool(),
        Some(true),
        "{}",
        file.display()
    );
    for profile in ["seccompProfile", "appArmorProfile"] {
        assert_eq!(
            security[profile]["type"].as_str(),
            Some("Unconfined"),
            "{}: {profile} (the runtime's default refuses bpf, perf_event_open or mount)",
            file.display()
        );
    }
    if let Some(image) = container["image"].as_str() {
        // The image `cargo xtask image` builds, with the binary at its root.
        assert_eq!(image, format!("leakhound:{}", env!("CARGO_PKG_VERSION")));
        assert_eq!(
            strings(&container["command"]),
            ["/leakhound"],
            "{}",
            file.display()
        );
        check_arguments(file, &strings(&container["args"]));
    }
}

/// The arguments name a subcommand and options the binary has (placeholders aside).
fn check_arguments(file: &Path, args: &[&str]) {
    let (subcommand, options) = args.split_first().expect("arguments");
    assert!(
        ["record", "agent"].contains(subcommand),
        "{}: {subcommand}",
        file.display()
    );
    let bin = tests::paths::target_dir().join("release/leakhound");
    let bin = std::env::var_os("LEAKHOUND_BIN").map_or(bin, PathBuf::from);
    if !bin.is_file() {
        eprintln!(
            "skipped: the options in {} (no leakhound built at {})",
            file.display(),
            bin.display()
        );
        return;
    }
    let help = Command::new(&bin)
        .args([subcommand, "--help"])
        .output()
        .expect("leakhound runs");
    let help = String::from_utf8_lossy(&help.stdout);
    for option in options.iter().filter(|arg| arg.starts_with("--")) {
        assert!(
            help.contains(option),
            "{}: leakhound {subcommand} has no {option}",
            file.display()
        );
    }
}

#[test]
fn every_manifest_grants_what_leakhound_needs_and_says_why() {
    for (file, text) in manifests() {
        let docs =
            YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(!docs.is_empty(), "{} holds a document", file.display());
        for capability in CAPABILITIES {
            assert!(
                text.contains(&format!("CAP_{capability}")),
                "{}: says why CAP_{capability} is needed",
                file.display()
            );
        }
        for doc in &docs {
            for container in containers(doc) {
                check_container(&file, container);
            }
        }
    }
}

#[test]
fn the_node_pod_shares_the_nodes_pids_and_the_debug_container_the_apps() {
    let manifests = manifests();
    let load = |name: &str| {
        let (file, text) = manifests
            .iter()
            .find(|(file, _)| file.ends_with(name))
            .unwrap_or_else(|| panic!("deploy/{name}"));
        let doc = YamlLoader::load_from_str(text).expect("parses").remove(0);
        (file.clone(), text.clone(), doc)
    };
    let (_, _, node) = load("node-debug-pod.yaml");
    assert_eq!(node["spec"]["hostPID"].as_bool(), Some(true));
    assert_eq!(
        node["spec"]["hostNetwork"].as_bool(),
        None,
        "no host network"
    );
    assert!(node["spec"]["volumes"].is_badvalue(), "no host mounts");
    // The ephemeral container joins the app container's PID namespace through --target.
    let (_, text, debug) = load("debug-container.yaml");
    assert!(
        debug["kind"].is_badvalue(),
        "a partial container spec for --custom"
    );
    assert!(text.contains("--target=") && text.contains("--custom=deploy/debug-container.yaml"));
}

#[test]
fn the_daemonset_runs_the_agent_on_every_node_with_the_nodes_pids() {
    let (file, text) = manifests()
        .into_iter()
        .find(|(file, _)| file.ends_with("daemonset.yaml"))
        .expect("deploy/daemonset.yaml");
    let doc = YamlLoader::load_from_str(&text).expect("parses").remove(0);
    assert_eq!(doc["kind"].as_str(), Some("DaemonSet"));
    let spec = &doc["spec"]["template"]["spec"];
    assert_eq!(
        spec["hostPID"].as_bool(),
        Some(true),
        "it selects among the node's processes"
    );
    assert!(spec["hostNetwork"].is_badvalue(), "no host network");
    assert!(spec["volumes"].is_badvalue(), "no host mounts");
    // Time for every child to detach and push its final profile after SIGTERM.
    assert!(
        spec["terminationGracePeriodSeconds"]
            .as_i64()
            .is_some_and(|secs| secs >= 45),
        "{}",
        file.display()
    );
    let container = &spec["containers"][0];
    let args = strings(&container["args"]);
    assert_eq!(args.first(), Some(&"agent"));
    assert!(
        ["--match-cmdline", "--cgroup", "--container"]
            .iter()
            .any(|selector| args.contains(selector)),
        "a selector in {args:?}"
    );
    let url = args
        .iter()
        .position(|arg| *arg == "--push")
        .and_then(|at| args.get(at + 1))
        .expect("--push URL");
    assert!(url.starts_with("http://"), "a Pyroscope URL: {url}");
    // The `host` label: the node's name from the downward API.
    let env = container["env"].as_vec().expect("env");
    assert!(
        env.iter()
            .any(|var| var["name"].as_str() == Some("NODE_NAME")
                && var["valueFrom"]["fieldRef"]["fieldPath"].as_str() == Some("spec.nodeName")),
        "NODE_NAME from spec.nodeName"
    );
    assert!(
        text.contains("hostPID ") && text.contains("why"),
        "{} says why hostPID is needed",
        file.display()
    );
}
