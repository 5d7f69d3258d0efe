//! How often a recording (`run --record`, `run --stream-to`, a primary `node`) logs a digest of
//! the whole machine, which replay checks: the same flags for every command that records.

use std::time::Duration;

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct DigestArgs {
    /// Milliseconds between state digests in the log, at least. Each hashes every page the
    /// guest ever wrote (~0.1 s per GiB of them) while the guest waits, and replay checks it.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub digest_interval_ms: u64,
    /// The largest share of the guest's time digests may take, in percent: a digest that took
    /// longer than that share of the interval (a guest that has written gigabytes) puts the
    /// next one further off.
    #[arg(long, default_value_t = 1.0, value_name = "PERCENT", value_parser = parse_percent)]
    pub digest_budget_percent: f64,
}

impl DigestArgs {
    /// The interval.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.digest_interval_ms)
    }

    /// The budget as a share (1% is 0.01).
    pub fn max_share(&self) -> f64 {
        self.digest_budget_percent / 100.0
    }
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of percent"))?;
    if v.is_finite() && v > 0.0 && v <= 100.0 {
        Ok(v)
    } else {
        Err(format!("{s} is not a percentage above 0 and at most 100"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_is_a_percentage_above_zero() {
        assert_eq!(parse_percent("1"), Ok(1.0));
        assert_eq!(parse_percent("0.001"), Ok(0.001));
        assert_eq!(parse_percent("100"), Ok(100.0));
        for bad in ["0", "-1", "100.5", "NaN", "inf", "one"] {
            assert!(parse_percent(bad).is_err(), "{bad}");
        }
    }
}
