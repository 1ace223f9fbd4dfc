//! Latency samples and their percentiles, and the small numeric helpers the report uses.

use std::time::Duration;

/// Latency samples of one kind of operation.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    values: Vec<Duration>,
    sorted: bool,
}

impl Samples {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            values: Vec::with_capacity(capacity),
            sorted: true,
        }
    }

    pub fn push(&mut self, value: Duration) {
        self.values.push(value);
        self.sorted = false;
    }

    pub fn extend(&mut self, other: Samples) {
        self.values.extend(other.values);
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// The nearest-rank percentile (`q` in 0..=1); zero when there are no samples.
    pub fn percentile(&mut self, q: f64) -> Duration {
        if self.values.is_empty() {
            return Duration::ZERO;
        }
        if !self.sorted {
            self.values.sort_unstable();
            self.sorted = true;
        }
        let rank = (q.clamp(0.0, 1.0) * self.values.len() as f64).ceil() as usize;
        self.values[rank.clamp(1, self.values.len()) - 1]
    }

    pub fn summary(&mut self) -> Percentiles {
        Percentiles {
            count: self.len(),
            p50: self.percentile(0.50),
            p99: self.percentile(0.99),
            p999: self.percentile(0.999),
            max: self.percentile(1.0),
        }
    }
}

/// What the report shows of a latency distribution.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    pub count: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
}

/// A duration in the unit that reads best: "87 µs", "1.42 ms", "3.1 s".
pub fn human(d: Duration) -> String {
    let micros = d.as_secs_f64() * 1e6;
    if micros < 1_000.0 {
        format!("{micros:.0} µs")
    } else if micros < 1_000_000.0 {
        format!("{:.2} ms", micros / 1e3)
    } else {
        format!("{:.2} s", micros / 1e6)
    }
}

/// A rate with thousands separators: "123,456/s".
pub fn rate(per_second: f64) -> String {
    format!("{}/s", thousands(per_second.round() as u64))
}

/// 1234567 -> "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Per-second rate of `count` events over `elapsed` (0 when nothing elapsed).
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut s = Samples::default();
        for n in (1..=100).rev() {
            s.push(ms(n));
        }
        assert_eq!(s.percentile(0.5), ms(50));
        assert_eq!(s.percentile(0.99), ms(99));
        assert_eq!(s.percentile(0.999), ms(100));
        assert_eq!(s.percentile(0.0), ms(1));
        let p = s.summary();
        assert_eq!((p.count, p.max), (100, ms(100)));
    }

    #[test]
    fn empty_samples_are_zero() {
        assert_eq!(Samples::default().percentile(0.99), Duration::ZERO);
    }

    #[test]
    fn formatting() {
        assert_eq!(human(Duration::from_micros(87)), "87 µs");
        assert_eq!(human(Duration::from_micros(1_420)), "1.42 ms");
        assert_eq!(human(Duration::from_millis(3_100)), "3.10 s");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
        assert_eq!(rate(12_345.4), "12,345/s");
        assert_eq!(per_second(10, Duration::from_secs(2)), 5.0);
        assert_eq!(per_second(10, Duration::ZERO), 0.0);
    }
}
