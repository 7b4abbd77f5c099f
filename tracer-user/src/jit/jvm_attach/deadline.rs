//! One deadline for a whole handshake. Per-call timeouts do not bound a peer that answers a
//! byte at a time: each read returns in time, and the reply never ends.

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    at: Instant,
    budget: Duration,
}

impl Deadline {
    pub fn after(budget: Duration) -> Self {
        Self {
            at: Instant::now() + budget,
            budget,
        }
    }

    /// What the whole handshake was given, for messages.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// Time left; `None` once the deadline has passed.
    pub fn remaining(&self) -> Option<Duration> {
        self.remaining_at(Instant::now())
    }

    fn remaining_at(&self, now: Instant) -> Option<Duration> {
        self.at
            .checked_duration_since(now)
            .filter(|left| !left.is_zero())
    }

    /// The time left as a `poll(2)` timeout in milliseconds, rounded up so that a poll never
    /// spins with 0 while time remains; `None` once the deadline has passed.
    pub fn poll_timeout_ms(&self) -> Option<libc::c_int> {
        self.remaining().map(poll_ms)
    }
}

fn poll_ms(left: Duration) -> libc::c_int {
    let ms = left.as_nanos().div_ceil(1_000_000).max(1);
    libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_once_and_stays_passed() {
        let deadline = Deadline::after(Duration::from_millis(50));
        assert!(deadline.remaining().is_some());
        assert_eq!(deadline.budget(), Duration::from_millis(50));
        let later = Instant::now() + Duration::from_millis(60);
        assert_eq!(deadline.remaining_at(later), None);
        assert_eq!(Deadline::after(Duration::ZERO).remaining(), None);
    }

    #[test]
    fn poll_timeouts_round_up() {
        assert_eq!(poll_ms(Duration::from_nanos(1)), 1);
        assert_eq!(poll_ms(Duration::from_micros(1500)), 2);
        assert_eq!(poll_ms(Duration::from_secs(2)), 2000);
        assert_eq!(poll_ms(Duration::from_secs(u64::MAX)), libc::c_int::MAX);
    }
}
