//! Waiting for something to become true, polling it, with a timeout.

use std::convert::Infallible;
use std::time::{Duration, Instant};

/// How often the waits of this crate poll.
pub const POLL: Duration = Duration::from_millis(20);

/// Calls `check` until it finds something (returned) or `timeout` has passed (`None`), spending
/// up to `every` between calls in `pause` (which may sleep, or do useful work meanwhile, such as
/// showing a child's lines). `check` runs at least once, and once more at the deadline; an error
/// from it ends the wait.
pub fn try_poll_with<T, E>(
    timeout: Duration,
    every: Duration,
    mut pause: impl FnMut(Duration),
    mut check: impl FnMut() -> Result<Option<T>, E>,
) -> Result<Option<T>, E> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = check()? {
            return Ok(Some(found));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        pause(every.min(left));
    }
}

/// [`try_poll_with`], sleeping between calls.
pub fn try_poll<T, E>(
    timeout: Duration,
    every: Duration,
    check: impl FnMut() -> Result<Option<T>, E>,
) -> Result<Option<T>, E> {
    try_poll_with(timeout, every, std::thread::sleep, check)
}

/// [`try_poll_with`] of a check that cannot fail.
pub fn poll_with<T>(
    timeout: Duration,
    every: Duration,
    pause: impl FnMut(Duration),
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let found: Result<Option<T>, Infallible> = try_poll_with(timeout, every, pause, || Ok(check()));
    match found {
        Ok(found) => found,
        Err(never) => match never {},
    }
}

/// [`poll_with`], sleeping between calls.
pub fn poll<T>(timeout: Duration, every: Duration, check: impl FnMut() -> Option<T>) -> Option<T> {
    poll_with(timeout, every, std::thread::sleep, check)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_what_the_check_finds() {
        let mut n = 0;
        let found = poll(Duration::from_secs(5), Duration::from_millis(1), || {
            n += 1;
            (n == 3).then_some(n)
        });
        assert_eq!(found, Some(3));
    }

    #[test]
    fn gives_up_after_the_timeout_having_checked_at_the_deadline() {
        let start = Instant::now();
        let mut calls = 0;
        let found: Option<()> = poll(Duration::from_millis(50), Duration::from_millis(10), || {
            calls += 1;
            None
        });
        assert_eq!(found, None);
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert!(calls >= 2);
    }

    #[test]
    fn an_error_ends_the_wait() {
        let r: Result<Option<()>, &str> =
            try_poll(Duration::from_secs(5), Duration::from_millis(1), || {
                Err("no")
            });
        assert_eq!(r, Err("no"));
    }

    #[test]
    fn pause_gets_at_most_every() {
        let mut pauses = Vec::new();
        let _: Option<()> = poll_with(
            Duration::from_millis(30),
            Duration::from_millis(20),
            |d| {
                pauses.push(d);
                std::thread::sleep(d);
            },
            || None,
        );
        assert!(pauses.iter().all(|d| *d <= Duration::from_millis(20)));
    }
}
