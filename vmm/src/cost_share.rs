//! Periodic work that stops the guest (a digest hashing its memory, a replay's checkpoint
//! copying it) costs in proportion to the memory the guest has written: a millisecond for our
//! guests, a tenth of a second per GiB for one that has written gigabytes. Such work comes
//! at its own period, or further apart when one round took more than its share of the time.

use std::time::Duration;

/// The wait before the next round of work that comes every `every` and just took `cost`, so
/// that it takes at most `max_share` of the time (`0.01`: 1%). A share of 0 or less: never
/// again (`Duration::MAX`).
pub fn spaced(every: Duration, cost: Duration, max_share: f64) -> Duration {
    if max_share <= 0.0 || !max_share.is_finite() {
        return Duration::MAX;
    }
    every.max(Duration::try_from_secs_f64(cost.as_secs_f64() / max_share).unwrap_or(Duration::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn cheap_work_keeps_its_period() {
        assert_eq!(spaced(MS(1000), MS(1), 0.01), MS(1000));
        assert_eq!(spaced(MS(1000), MS(10), 0.01), MS(1000));
        assert_eq!(spaced(MS(1000), Duration::ZERO, 0.01), MS(1000));
    }

    #[test]
    fn costly_work_is_spaced_to_its_share() {
        // 300 ms at 1%: 30 s apart.
        assert_eq!(spaced(MS(1000), MS(300), 0.01), MS(30_000));
        // The whole time allowed: the period rules unless the work outlasts it.
        assert_eq!(spaced(MS(10), MS(3), 1.0), MS(10));
        assert_eq!(spaced(MS(10), MS(30), 1.0), MS(30));
    }

    #[test]
    fn no_share_means_never_again() {
        assert_eq!(spaced(MS(1000), MS(1), 0.0), Duration::MAX);
        assert_eq!(spaced(MS(1000), MS(1), -1.0), Duration::MAX);
        assert_eq!(spaced(MS(1000), MS(1), f64::NAN), Duration::MAX);
    }

    #[test]
    fn a_share_too_small_to_measure_saturates() {
        assert_eq!(
            spaced(MS(1), Duration::from_secs(1 << 40), 1e-300),
            Duration::MAX
        );
    }
}
