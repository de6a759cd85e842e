//! What the buyers do: the workloads of the performance issue, each a source of operations.
//!
//! - `hot`: everyone purchases one unit of one SKU (stock large enough not to sell out, or
//!   zero with `--sold-out` for a storm of rejections).
//! - `zipf`: purchases over N SKUs with Zipf popularity (exponent `--zipf-s`).
//! - `reads`: product-page stock reads over N Zipf SKUs at one consistency level.
//! - `black-friday`: the seed's mix (50M users, 5M orders, 500M reads over 3 hours) scaled by
//!   `--scale`: orders (80% reserve + confirm, 20% purchase) and reads (90% stale, 10%
//!   linearizable) over 1 000 Zipf SKUs with flash-sale stock, the first 20% of the orders as a
//!   burst before any read.

use rand::Rng;
use rand::rngs::SmallRng;

/// Which workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadKind {
    Hot,
    Zipf,
    Reads,
    BlackFriday,
}

/// One operation to send.
#[derive(Debug, Clone)]
pub enum Action {
    Purchase {
        sku: usize,
        user: u64,
    },
    /// Reserve, then confirm (two calls; the latency covers both).
    ReserveConfirm {
        sku: usize,
        user: u64,
    },
    Read {
        sku: usize,
        linearizable: bool,
    },
}

/// Zipf(s) over `n` ranks by inverse CDF (a precomputed table, binary search per draw).
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Zipf {
        let weights: Vec<f64> = (1..=n.max(1)).map(|rank| 1.0 / (rank as f64).powf(s)).collect();
        let total: f64 = weights.iter().sum();
        let mut running = 0.0;
        let cdf = weights
            .iter()
            .map(|w| {
                running += w / total;
                running
            })
            .collect();
        Zipf { cdf }
    }

    pub fn sample(&self, rng: &mut SmallRng) -> usize {
        let u: f64 = rng.r#gen();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

/// The Black Friday plan at a scale: how many of each, in which order.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct BlackFridayPlan {
    pub users: u64,
    pub orders: u64,
    pub reads: u64,
    /// Orders sent before the first read (the opening burst).
    pub burst_orders: u64,
}

impl BlackFridayPlan {
    /// The full-scale figures divided by `scale` (100 = 1/100).
    pub fn scaled(scale: u64) -> BlackFridayPlan {
        let scale = scale.max(1);
        let orders = 5_000_000 / scale;
        BlackFridayPlan {
            users: 50_000_000 / scale,
            orders,
            reads: 500_000_000 / scale,
            burst_orders: orders / 5,
        }
    }

    pub fn total(&self) -> u64 {
        self.orders + self.reads
    }

    /// Operation `index` (0-based) of the plan: the burst first, then orders spread evenly
    /// among the reads.
    pub fn action(&self, index: u64, rng: &mut SmallRng, zipf: &Zipf) -> Action {
        let sku = zipf.sample(rng);
        let user = rng.gen_range(0..self.users.max(1));
        let is_order = if index < self.burst_orders {
            true
        } else {
            let rest_orders = self.orders - self.burst_orders;
            let rest_total = self.total() - self.burst_orders;
            let position = index - self.burst_orders;
            // Order k of the rest sits at position floor(k * rest_total / rest_orders).
            rest_orders > 0 && (position * rest_orders) / rest_total != ((position + 1) * rest_orders) / rest_total
        };
        if is_order {
            if rng.gen_bool(0.8) {
                Action::ReserveConfirm { sku, user }
            } else {
                Action::Purchase { sku, user }
            }
        } else {
            Action::Read {
                sku,
                linearizable: rng.gen_bool(0.1),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn the_black_friday_plan_has_the_scaled_counts_and_opens_with_the_burst() {
        let plan = BlackFridayPlan::scaled(10_000);
        assert_eq!((plan.users, plan.orders, plan.reads), (5_000, 500, 50_000));
        let zipf = Zipf::new(1_000, 1.0);
        let mut rng = SmallRng::seed_from_u64(1);
        let actions: Vec<Action> = (0..plan.total()).map(|i| plan.action(i, &mut rng, &zipf)).collect();
        let is_order = |a: &Action| !matches!(a, Action::Read { .. });
        assert_eq!(actions.iter().filter(|a| is_order(a)).count() as u64, plan.orders);
        assert!(actions[..plan.burst_orders as usize].iter().all(is_order));
    }

    #[test]
    fn zipf_favours_low_ranks() {
        let zipf = Zipf::new(1_000, 1.0);
        let mut rng = SmallRng::seed_from_u64(7);
        let draws: Vec<usize> = (0..20_000).map(|_| zipf.sample(&mut rng)).collect();
        let top = draws.iter().filter(|&&r| r == 0).count();
        let tail = draws.iter().filter(|&&r| r == 999).count();
        assert!(draws.iter().all(|&r| r < 1_000));
        assert!(top > 1_000 && tail < 50, "top {top} tail {tail}");
    }
}
