//! Bounds on what reading a saved recording may allocate. A recording a user is handed may be
//! crafted: every list is read element by element with no capacity taken from the input, up
//! to a limit, and frames, which cost ten times their size in the file, come out of a budget
//! for the whole file.

use std::{cell::Cell, fmt, marker::PhantomData};

use serde::de::{Deserialize, Deserializer, Error as _, SeqAccess, Visitor};

use crate::analysis::history::DEFAULT_CAP;

/// Stacks in one recording: 16 times the default `--max-stacks`.
pub const MAX_STACKS: usize = 1 << 18;
/// Frames in one stack: the kernel walks 127 frames, and each may add its inlined calls.
pub const MAX_FRAMES_PER_STACK: usize = 2048;
/// Frames in one recording: a million-allocation trace over 10,000 stacks 100 deep has 10^6.
pub const MAX_FRAMES: u64 = 1 << 22;
/// Samples in one recording: the timeline's cap, plus the one sample that overfills it
/// before it is halved.
pub const MAX_SAMPLES: usize = DEFAULT_CAP + 1;

/// Deserialises a list of at most `MAX` elements, growing it one element at a time.
pub fn at_most<'de, D, T, const MAX: usize>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct AtMost<T, const MAX: usize>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>, const MAX: usize> Visitor<'de> for AtMost<T, MAX> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a list of at most {MAX} elements")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            // No capacity from `seq.size_hint()`: the input says how long it is.
            let mut out = Vec::new();
            while let Some(element) = seq.next_element()? {
                if out.len() == MAX {
                    return Err(A::Error::custom(format_args!(
                        "a list longer than {MAX} elements"
                    )));
                }
                out.push(element);
            }
            Ok(out)
        }
    }

    deserializer.deserialize_seq(AtMost::<T, MAX>(PhantomData))
}

thread_local! {
    /// Frames the deserialisation running on this thread may still make; unlimited outside
    /// [`with_frame_budget`].
    static FRAMES_LEFT: Cell<u64> = const { Cell::new(u64::MAX) };
}

/// Runs `read` with at most `frames` frames to deserialise on this thread.
pub fn with_frame_budget<R>(frames: u64, read: impl FnOnce() -> R) -> R {
    struct Restore(u64);
    impl Drop for Restore {
        fn drop(&mut self) {
            FRAMES_LEFT.set(self.0);
        }
    }
    let _restore = Restore(FRAMES_LEFT.replace(frames));
    read()
}

/// Takes one frame from the budget, before the frame is read.
pub fn take_frame<E: serde::de::Error>() -> Result<(), E> {
    let left = FRAMES_LEFT.get();
    if left == 0 {
        return Err(E::custom(format_args!(
            "more than {MAX_FRAMES} frames in one recording"
        )));
    }
    FRAMES_LEFT.set(left - 1);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Three {
        #[serde(deserialize_with = "at_most::<_, _, 3>")]
        list: Vec<u8>,
    }

    #[test]
    fn lists_are_bounded() {
        let ok: Three = serde_json::from_str(r#"{"list":[1,2,3]}"#).unwrap();
        assert_eq!(ok.list, [1, 2, 3]);
        let err = serde_json::from_str::<Three>(r#"{"list":[1,2,3,4]}"#).unwrap_err();
        assert!(err.to_string().contains("longer than 3"), "{err}");
    }

    #[test]
    fn the_frame_budget_is_scoped() {
        let json = r#"[{"name":"a"},{"name":"b"},{"name":"c"}]"#;
        let read = || serde_json::from_str::<Vec<crate::model::Frame>>(json);
        assert!(with_frame_budget(3, read).is_ok());
        let err = with_frame_budget(2, read).unwrap_err();
        assert!(err.to_string().contains("frames"), "{err}");
        assert!(read().is_ok(), "unlimited outside the budget");
    }
}
