//! Faults the tests inject into attaching, to check the paths a healthy kernel never takes:
//! a failure part-way through the attach (everything must be detached), and the perf-event
//! uprobes of kernels before 6.6 on a kernel that has multi-uprobe links. And one into
//! tracing: unwind answers as late as a loaded machine gives them, so that every walk from a
//! new call site misses and is repaired, as happens only now and then on a quiet one.
//!
//! Only a build with the `fault-injection` feature reads them (from the `LEAKHOUND_TEST_*`
//! variables below); the binary that ships, demos and benchmarks has none, so no environment
//! can make it fail on purpose.

use crate::errors::TracerError;

#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Fail once this many uprobes are attached.
    fail_attach_after: Option<usize>,
    /// Refuse multi-uprobe links, as a kernel before 6.6 does.
    no_multi_uprobe_links: bool,
    /// Wait this long before answering each unwind miss.
    unwind_answer_delay: Option<std::time::Duration>,
}

impl Faults {
    /// The faults asked for: always none without the `fault-injection` feature.
    #[cfg(not(feature = "fault-injection"))]
    pub fn injected() -> Self {
        Self::default()
    }

    /// The faults asked for in the environment.
    #[cfg(feature = "fault-injection")]
    pub fn injected() -> Self {
        Self {
            fail_attach_after: std::env::var("LEAKHOUND_TEST_FAIL_ATTACH_AFTER")
                .ok()
                .and_then(|n| n.parse().ok()),
            no_multi_uprobe_links: std::env::var_os("LEAKHOUND_TEST_PERF_UPROBES").is_some(),
            unwind_answer_delay: std::env::var("LEAKHOUND_TEST_UNWIND_ANSWER_DELAY_MS")
                .ok()
                .and_then(|ms| ms.parse().ok())
                .map(std::time::Duration::from_millis),
        }
    }

    /// Before attaching `what` with `attached` uprobes in place: the injected failure, if due.
    pub fn check(&self, attached: usize, what: impl FnOnce() -> String) -> Result<(), TracerError> {
        if self.fail_attach_after.is_some_and(|n| attached >= n) {
            return Err(TracerError::Attach {
                what: format!("{} (injected failure)", what()),
                source: Box::new(aya::programs::ProgramError::NotAttached),
            });
        }
        Ok(())
    }

    /// How long to wait before answering an unwind miss: none unless injected.
    pub fn unwind_answer_delay(&self) -> Option<std::time::Duration> {
        self.unwind_answer_delay
    }

    /// Whether multi-uprobe links may be tried.
    pub fn multi_uprobe_links(&self) -> std::io::Result<()> {
        if self.no_multi_uprobe_links {
            return Err(std::io::Error::other("refused by fault injection"));
        }
        Ok(())
    }
}
