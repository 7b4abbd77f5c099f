//! Faults the tests inject into attaching, to check the paths a healthy kernel never takes:
//! a failure part-way through the attach (everything must be detached), and the perf-event
//! uprobes of kernels before 6.6 on a kernel that has multi-uprobe links.

use crate::errors::TracerError;

#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Fail once this many uprobes are attached.
    fail_attach_after: Option<usize>,
    /// Refuse multi-uprobe links, as a kernel before 6.6 does.
    no_multi_uprobe_links: bool,
}

impl Faults {
    /// The faults asked for in the environment.
    pub fn injected() -> Self {
        Self {
            fail_attach_after: std::env::var("LEAKHOUND_TEST_FAIL_ATTACH_AFTER")
                .ok()
                .and_then(|n| n.parse().ok()),
            no_multi_uprobe_links: std::env::var_os("LEAKHOUND_TEST_PERF_UPROBES").is_some(),
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

    /// Whether multi-uprobe links may be tried.
    pub fn multi_uprobe_links(&self) -> std::io::Result<()> {
        if self.no_multi_uprobe_links {
            return Err(std::io::Error::other(
                "refused by fault injection (LEAKHOUND_TEST_PERF_UPROBES)",
            ));
        }
        Ok(())
    }
}
