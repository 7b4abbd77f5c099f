//! V8's sampling heap profile (`HeapProfiler.getSamplingProfile`), turned into stacks of live
//! JavaScript heap. Pure: bytes in, stacks out.
//!
//! The reply comes from the target's inspector, so it is untrusted: its size is capped before
//! this sees it, its nesting is checked with a scan before it is parsed (the profile is a tree,
//! and a parser that recursed without bound would overflow the stack on a crafted reply), and
//! the node count is capped.

use std::collections::HashMap;

use serde::Deserialize;

/// Deepest call tree taken, in frames; a deeper reply is refused whole.
pub const MAX_DEPTH: usize = 512;
/// Call-tree nodes taken at most from one profile.
pub const MAX_NODES: usize = 1 << 18;
/// JSON nesting of one tree level (the node object and its `children` list), and of the
/// envelope around the tree (`{"id","result":{"profile":{"head":`), with room to spare.
const JSON_LEVELS_PER_FRAME: usize = 2;
const JSON_ENVELOPE_LEVELS: usize = 8;
/// The deepest nesting a reply may have.
pub const MAX_JSON_NESTING: usize = MAX_DEPTH * JSON_LEVELS_PER_FRAME + JSON_ENVELOPE_LEVELS;

/// One JavaScript frame as the profile names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct JsFrame {
    pub function: String,
    pub url: String,
    /// 1-based; none when V8 gives none.
    pub line: Option<u32>,
}

impl JsFrame {
    /// The name a report shows: the function's, or for an anonymous one its place, as V8's
    /// own perf map names it (`(anonymous server.js:36)`).
    pub fn display_name(&self) -> String {
        if !self.function.is_empty() {
            return self.function.clone();
        }
        let file = self.url.rsplit('/').next().unwrap_or_default();
        match (file.is_empty(), self.line) {
            (true, _) => "(anonymous)".to_owned(),
            (false, Some(line)) => format!("(anonymous {file}:{line})"),
            (false, None) => format!("(anonymous {file})"),
        }
    }
}

/// Live bytes of one call path, root frame first, summed over the tree's nodes that share it.
#[derive(Clone, Debug, PartialEq)]
pub struct JsStack {
    pub frames: Vec<JsFrame>,
    pub bytes: u64,
    /// Estimated objects: each sample of `size` bytes stands for `1/p` objects, as V8 scales
    /// its bytes (`p = 1 - exp(-size/interval)`).
    pub objects: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProfileError {
    #[error("the profile nests deeper than {max} levels")]
    TooDeep { max: usize },
    #[error("the profile has more than {MAX_NODES} call-tree nodes")]
    TooManyNodes,
    #[error("the profile is not a sampling heap profile: {0}")]
    Malformed(String),
}

#[derive(Deserialize)]
struct Profile {
    head: Node,
    #[serde(default)]
    samples: Vec<SampleEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Node {
    call_frame: CallFrame,
    #[serde(default)]
    self_size: f64,
    #[serde(default)]
    id: u64,
    #[serde(default)]
    children: Vec<Node>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CallFrame {
    #[serde(default)]
    function_name: String,
    #[serde(default)]
    url: String,
    #[serde(default = "no_line")]
    line_number: i64,
}

fn no_line() -> i64 {
    -1
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SampleEntry {
    size: f64,
    node_id: u64,
}

/// The deepest nesting of objects and lists in `json`, counted without parsing it (strings
/// skipped), stopping as soon as it passes `max`.
pub fn nesting_within(json: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in json {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// Parses the `profile` of a `getSamplingProfile` reply (the whole reply: `{"id":..,
/// "result":{"profile":..}}`) and sums live bytes by call path. `interval` is the sampling
/// interval asked for, to estimate object counts.
pub fn stacks_of_reply(reply: &[u8], interval: u64) -> Result<Vec<JsStack>, ProfileError> {
    if !nesting_within(reply, MAX_JSON_NESTING) {
        return Err(ProfileError::TooDeep { max: MAX_DEPTH });
    }
    #[derive(Deserialize)]
    struct Reply {
        result: ProfileResult,
    }
    #[derive(Deserialize)]
    struct ProfileResult {
        profile: Profile,
    }
    let mut de = serde_json::Deserializer::from_slice(reply);
    // The nesting was checked above; serde_json's own limit (128) is below a real tree's.
    de.disable_recursion_limit();
    let parsed = Reply::deserialize(&mut de).map_err(|e| ProfileError::Malformed(e.to_string()))?;
    stacks_of(&parsed.result.profile, interval)
}

fn stacks_of(profile: &Profile, interval: u64) -> Result<Vec<JsStack>, ProfileError> {
    let mut objects_by_node: HashMap<u64, f64> = HashMap::new();
    for sample in &profile.samples {
        *objects_by_node.entry(sample.node_id).or_default() +=
            objects_per_sample(sample.size, interval);
    }
    let mut by_path: HashMap<Vec<JsFrame>, (u64, f64)> = HashMap::new();
    let mut path: Vec<JsFrame> = Vec::new();
    let mut nodes = 0usize;
    // The root node ("(root)") stands for no frame.
    walk(
        &profile.head,
        0,
        &mut path,
        &mut nodes,
        &objects_by_node,
        &mut by_path,
    )?;
    let mut stacks: Vec<JsStack> = by_path
        .into_iter()
        .map(|(frames, (bytes, objects))| JsStack {
            frames,
            bytes,
            objects: objects.round() as u64,
        })
        .collect();
    stacks.sort_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then_with(|| a.frames.len().cmp(&b.frames.len()))
    });
    Ok(stacks)
}

fn walk(
    node: &Node,
    depth: usize,
    path: &mut Vec<JsFrame>,
    nodes: &mut usize,
    objects_by_node: &HashMap<u64, f64>,
    by_path: &mut HashMap<Vec<JsFrame>, (u64, f64)>,
) -> Result<(), ProfileError> {
    *nodes += 1;
    if *nodes > MAX_NODES {
        return Err(ProfileError::TooManyNodes);
    }
    if depth > MAX_DEPTH {
        return Err(ProfileError::TooDeep { max: MAX_DEPTH });
    }
    let is_root = depth == 0;
    if !is_root {
        let frame = &node.call_frame;
        path.push(JsFrame {
            function: frame.function_name.clone(),
            url: frame.url.clone(),
            line: u32::try_from(frame.line_number)
                .ok()
                .and_then(|l| l.checked_add(1)),
        });
    }
    // A finite, non-negative size only; V8 sends whole numbers.
    let bytes = if node.self_size.is_finite() && node.self_size > 0.0 {
        node.self_size.min(u64::MAX as f64) as u64
    } else {
        0
    };
    if bytes > 0 && !is_root {
        let entry = by_path.entry(path.clone()).or_default();
        entry.0 = entry.0.saturating_add(bytes);
        entry.1 += objects_by_node.get(&node.id).copied().unwrap_or(0.0);
    }
    for child in &node.children {
        walk(child, depth + 1, path, nodes, objects_by_node, by_path)?;
    }
    if !is_root {
        path.pop();
    }
    Ok(())
}

/// How many objects one sample of `size` bytes stands for: V8 samples an allocation with
/// probability `1 - exp(-size/interval)` and scales its bytes by the inverse.
fn objects_per_sample(size: f64, interval: u64) -> f64 {
    if !size.is_finite() || size <= 0.0 || interval == 0 {
        return 0.0;
    }
    let p = 1.0 - (-size / interval as f64).exp();
    if p > 0.0 { 1.0 / p } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, line: i64, self_size: u64, id: u64, children: &str) -> String {
        format!(
            r#"{{"callFrame":{{"functionName":"{name}","scriptId":"1","url":"file:///srv/app.js","lineNumber":{line},"columnNumber":0}},"selfSize":{self_size},"id":{id},"children":[{children}]}}"#
        )
    }

    fn reply(head: &str, samples: &str) -> Vec<u8> {
        format!(r#"{{"id":7,"result":{{"profile":{{"head":{head},"samples":[{samples}]}}}}}}"#)
            .into_bytes()
    }

    #[test]
    fn a_tree_becomes_root_first_stacks_with_their_bytes() {
        let leaf = node("addMessageListener", 20, 81_920, 3, "");
        let other = node("", 41, 4_096, 4, "");
        let mid = node("onData", 30, 0, 2, &format!("{leaf},{other}"));
        let head = node("(root)", -1, 0, 1, &mid);
        let samples =
            r#"{"size":8208,"nodeId":3,"ordinal":1},{"size":8208,"nodeId":3,"ordinal":2}"#;
        let stacks = stacks_of_reply(&reply(&head, samples), 32_768).unwrap();
        assert_eq!(stacks.len(), 2);
        let top = &stacks[0];
        assert_eq!(top.bytes, 81_920);
        let names: Vec<String> = top.frames.iter().map(JsFrame::display_name).collect();
        assert_eq!(names, ["onData", "addMessageListener"]);
        assert_eq!(top.frames[1].line, Some(21));
        // Two samples of 8208 bytes at 32 KiB: each stands for 1/(1-exp(-8208/32768)) objects.
        assert_eq!(top.objects, 9);
        assert_eq!(stacks[1].frames[1].display_name(), "(anonymous app.js:42)");
    }

    #[test]
    fn nodes_on_one_path_are_summed() {
        // Two children with the same frame (V8 splits nodes by column): one stack.
        let a = node("f", 1, 100, 2, "");
        let b = node("f", 1, 50, 3, "");
        let head = node("(root)", -1, 0, 1, &format!("{a},{b}"));
        let stacks = stacks_of_reply(&reply(&head, ""), 32_768).unwrap();
        assert_eq!(stacks.len(), 1);
        assert_eq!(stacks[0].bytes, 150);
    }

    #[test]
    fn a_deep_reply_is_refused_before_parsing() {
        let mut tree = node("leaf", 1, 8, 1, "");
        for i in 0..MAX_DEPTH + 2 {
            tree = node("f", 1, 0, i as u64 + 2, &tree);
        }
        let err = stacks_of_reply(&reply(&tree, ""), 32_768).unwrap_err();
        assert_eq!(err, ProfileError::TooDeep { max: MAX_DEPTH });
        // Brackets inside strings do not count.
        assert!(nesting_within(br#"{"a":"[[[[[[[[[[\"[[["}"#, 2));
        assert!(!nesting_within(b"[[[", 2));
    }

    #[test]
    fn a_tree_just_within_the_depth_is_taken() {
        let mut tree = node("leaf", 1, 8, 1, "");
        for i in 0..MAX_DEPTH - 1 {
            tree = node("f", 1, 0, i as u64 + 2, &tree);
        }
        let head = node("(root)", -1, 0, 0, &tree);
        let stacks = stacks_of_reply(&reply(&head, ""), 32_768).unwrap();
        assert_eq!(stacks[0].frames.len(), MAX_DEPTH);
    }

    #[test]
    fn malformed_and_hostile_values_are_refused_or_ignored() {
        assert!(matches!(
            stacks_of_reply(br#"{"id":1,"result":{}}"#, 32_768),
            Err(ProfileError::Malformed(_))
        ));
        assert!(matches!(
            stacks_of_reply(b"not json", 32_768),
            Err(ProfileError::Malformed(_))
        ));
        // Negative sizes count nothing; huge lines give no line.
        let leaf = node("f", 9_999_999_999, 0, 2, "").replace("\"selfSize\":0", "\"selfSize\":-5");
        let head = node("(root)", -1, 0, 1, &leaf);
        let stacks = stacks_of_reply(&reply(&head, ""), 32_768).unwrap();
        assert!(stacks.is_empty());
    }
}
