//! Percentiles and medians, and the summary of one load run.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// Nearest-rank percentile of sorted samples (`p` in 0..=100).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // The epsilon keeps float error (99.9 / 100 * 1000 = 999.0000000000001)
    // from moving the rank up by one.
    let rank = (p / 100.0 * sorted.len() as f64 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// A distribution of samples, in whatever unit they were taken.
#[derive(Clone, Debug)]
pub struct Dist {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub min: f64,
}

impl Dist {
    pub fn of(mut v: Vec<f64>) -> Option<Dist> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(Dist {
            n: v.len(),
            p50: percentile(&v, 50.0),
            p90: percentile(&v, 90.0),
            p99: percentile(&v, 99.0),
            max: v[v.len() - 1],
            min: v[0],
        })
    }

    pub fn to_json(&self) -> Value {
        json!({"n": self.n, "p50": self.p50, "p90": self.p90, "p99": self.p99,
               "min": self.min, "max": self.max})
    }
}

pub fn dist_json(d: &Option<Dist>) -> Value {
    d.as_ref().map_or(Value::Null, Dist::to_json)
}

/// One load run (wrk or the constant-rate client). Latencies in µs.
#[derive(Clone, Debug, Default)]
pub struct Load {
    pub requests: f64,
    pub seconds: f64,
    pub rps: f64,
    /// Connect/read/write errors and timeouts.
    pub errors: f64,
    pub non_2xx: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// The rate a constant-rate run was asked for.
    pub target_rps: Option<f64>,
    /// Non-2xx answers by status, where the client can tell (not wrk).
    pub statuses: BTreeMap<u16, u64>,
}

impl Load {
    pub fn to_json(&self) -> Value {
        json!({
            "requests": self.requests, "seconds": self.seconds, "rps": self.rps,
            "errors": self.errors, "non_2xx": self.non_2xx,
            "p50_us": self.p50_us, "p90_us": self.p90_us, "p99_us": self.p99_us,
            "p999_us": self.p999_us, "max_us": self.max_us, "target_rps": self.target_rps,
            "non_2xx_by_status": self.statuses.iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect::<serde_json::Map<_, _>>(),
        })
    }

    /// Field-wise median over repeated runs (errors are summed: one bad
    /// round must stay visible).
    pub fn median_of(runs: &[Load]) -> Load {
        let m = |f: fn(&Load) -> f64| {
            median(&runs.iter().map(f).collect::<Vec<_>>()).unwrap_or(f64::NAN)
        };
        Load {
            requests: m(|l| l.requests),
            seconds: m(|l| l.seconds),
            rps: m(|l| l.rps),
            errors: runs.iter().map(|l| l.errors).sum(),
            non_2xx: runs.iter().map(|l| l.non_2xx).sum(),
            p50_us: m(|l| l.p50_us),
            p90_us: m(|l| l.p90_us),
            p99_us: m(|l| l.p99_us),
            p999_us: m(|l| l.p999_us),
            max_us: m(|l| l.max_us),
            target_rps: runs.first().and_then(|l| l.target_rps),
            statuses: runs.iter().flat_map(|l| l.statuses.iter()).fold(
                BTreeMap::new(),
                |mut acc, (k, v)| {
                    *acc.entry(*k).or_default() += v;
                    acc
                },
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 500.0);
        assert_eq!(percentile(&v, 99.0), 990.0);
        assert_eq!(percentile(&v, 99.9), 999.0);
        assert_eq!(percentile(&v, 100.0), 1000.0);
        assert_eq!(percentile(&[7.0], 99.9), 7.0);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN]), None);
    }
}
