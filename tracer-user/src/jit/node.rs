//! Node.js: recognising it, and its flags. JavaScript frames are named from V8's own metadata
//! (`jit::v8`); V8 also writes a perf map when asked to, with `--perf-basic-prof` (or
//! `--perf-basic-prof-only-functions`), on the command line or in `NODE_OPTIONS`, which is
//! what names them where that metadata cannot be read.

/// The flags that make V8 write `/tmp/perf-<pid>.map`.
const PERF_MAP_FLAGS: &[&str] = &[
    "--perf-basic-prof",
    "--perf-basic-prof-only-functions",
    "--perf-prof",
    "--perf_basic_prof",
    "--perf_basic_prof_only_functions",
    "--perf_prof",
];

/// Gives every interpreted function a copy of the interpreter's entry of its own, which the
/// perf map names; without it they all show as `Builtins_InterpreterEntryTrampoline`.
const INTERPRETED_FLAGS: &[&str] = &[
    "--interpreted-frames-native-stack",
    "--interpreted_frames_native_stack",
];

/// What to tell the user, once, when a Node target whose V8 metadata cannot be read runs
/// without a perf map.
pub const NO_PERF_MAP: &str = "JavaScript frames will show as [anon]: start node with \
     --perf-basic-prof --interpreted-frames-native-stack (or put them in NODE_OPTIONS) so that \
     V8 writes /tmp/perf-<pid>.map, which leakhound reads";

/// ... and when it writes one, but interpreted functions stay anonymous.
pub const NO_INTERPRETED: &str = "functions that V8 has not compiled yet show as \
     Builtins_InterpreterEntryTrampoline: add --interpreted-frames-native-stack to name them too";

/// What to tell the user about a Node process, if anything; `has_map` says whether its perf
/// map exists already (the flags may come from somewhere leakhound does not look).
pub fn advice(cmdline: &[u8], environ: &[u8], has_map: bool) -> Option<&'static str> {
    if !has_map && !has_flag(cmdline, environ, PERF_MAP_FLAGS) {
        Some(NO_PERF_MAP)
    } else if !has_flag(cmdline, environ, INTERPRETED_FLAGS) {
        Some(NO_INTERPRETED)
    } else {
        None
    }
}

/// Whether a process is Node.js, from its executable's name and the files it maps.
pub fn is_node<'a>(exe: &str, mapped: impl IntoIterator<Item = &'a str>) -> bool {
    let base = exe.rsplit('/').next().unwrap_or(exe);
    matches!(base, "node" | "nodejs")
        || mapped.into_iter().any(|path| {
            let file = path.rsplit('/').next().unwrap_or(path);
            file.starts_with("libnode.so")
        })
}

/// Whether Node was started with one of `flags`: in its arguments before the script (node's
/// own options end at the first argument that is not an option), or in NODE_OPTIONS.
/// `cmdline` and `environ` are the raw NUL-separated `/proc` files.
fn has_flag(cmdline: &[u8], environ: &[u8], flags: &[&str]) -> bool {
    let args = cmdline
        .split(|&b| b == 0)
        .skip(1)
        .map(String::from_utf8_lossy)
        .take_while(|arg| arg.starts_with('-'));
    let is_flag = |arg: &str| {
        let flag = arg.split_once('=').map_or(arg, |(flag, _)| flag);
        flags.contains(&flag)
    };
    let in_args = args.into_iter().any(|arg| is_flag(&arg));
    let in_env = environ
        .split(|&b| b == 0)
        .filter_map(|var| var.strip_prefix(b"NODE_OPTIONS="))
        .any(|options| {
            String::from_utf8_lossy(options)
                .split_whitespace()
                .any(is_flag)
        });
    in_args || in_env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_node_by_name_or_libnode() {
        assert!(is_node("/usr/bin/node", []));
        assert!(is_node("/opt/nodejs", []));
        assert!(is_node(
            "/usr/local/bin/server",
            ["/usr/lib/x86_64-linux-gnu/libnode.so.108"]
        ));
        assert!(!is_node(
            "/usr/bin/java",
            ["/usr/lib/jvm/lib/server/libjvm.so"]
        ));
        assert!(!is_node("/usr/bin/nodemon-helper", []));
    }

    fn writes_perf_map(cmdline: &[u8], environ: &[u8]) -> bool {
        has_flag(cmdline, environ, PERF_MAP_FLAGS)
    }

    #[test]
    fn advises_the_missing_flag() {
        assert_eq!(advice(b"node\0app.js\0", b"", false), Some(NO_PERF_MAP));
        assert_eq!(
            advice(b"node\0--perf-basic-prof\0app.js\0", b"", true),
            Some(NO_INTERPRETED)
        );
        assert_eq!(
            advice(b"node\0app.js\0", b"", true),
            Some(NO_INTERPRETED),
            "a map written for reasons unseen is enough"
        );
        assert_eq!(
            advice(
                b"node\0--perf-basic-prof-only-functions\0app.js\0",
                b"NODE_OPTIONS=--interpreted-frames-native-stack\0",
                false
            ),
            None
        );
    }

    #[test]
    fn finds_the_flag_before_the_script() {
        assert!(writes_perf_map(b"node\0--perf-basic-prof\0app.js\0", b""));
        assert!(writes_perf_map(
            b"node\0--max-old-space-size=512\0--perf-basic-prof-only-functions\0app.js\0",
            b""
        ));
        // After the script it is the script's argument, not node's.
        assert!(!writes_perf_map(b"node\0app.js\0--perf-basic-prof\0", b""));
        assert!(!writes_perf_map(b"node\0app.js\0", b"PATH=/bin\0"));
    }

    #[test]
    fn finds_the_flag_in_node_options() {
        assert!(writes_perf_map(
            b"node\0app.js\0",
            b"PATH=/bin\0NODE_OPTIONS=--enable-source-maps --perf-basic-prof\0"
        ));
        assert!(!writes_perf_map(
            b"node\0app.js\0",
            b"NODE_OPTIONS=--enable-source-maps\0OTHER=--perf-basic-prof\0"
        ));
    }
}
