//! Exact discrete noise for the global-signals snapshot: Bernoulli(exp(−γ)) and the discrete
//! Laplace distribution, sampled with integer arithmetic only from a cryptographic generator.
//!
//! Where it sits: [`super::global::SnapshotBuilder::build`] adds one [`discrete_laplace`] draw to
//! every released count. Why not `f64` Laplace: the inverse-CDF sampler on doubles leaks the
//! exact value through the set of reachable floating-point outputs (Mironov, "On significance of
//! the least significant bits for differential privacy", CCS 2012). These samplers follow
//! Canonne, Kamath & Steinke, "The Discrete Gaussian for Differential Privacy" (NeurIPS 2020),
//! Algorithm 1 (Bernoulli(exp(−γ)) for rational γ) and Algorithm 2 (discrete Laplace with scale
//! `t/s`): every step is a uniform integer draw, so the output distribution is exactly
//! `P(Z = z) ∝ exp(−|z|·s/t)` with no rounding anywhere.
//!
//! The generator is ChaCha20 (`rand_chacha`, already in the build through linfa's `rand`),
//! seeded per release (see the builder): without the seed nobody can predict or subtract it.

use rand_chacha::rand_core::RngCore;
pub use rand_chacha::ChaCha20Rng;

/// A positive rational `num / den`, reduced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ratio {
    /// numerator (≥ 1)
    pub num: u64,
    /// denominator (≥ 1)
    pub den: u64,
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Ratio {
    /// `num / den` reduced; `None` when either is 0.
    pub fn new(num: u64, den: u64) -> Option<Self> {
        if num == 0 || den == 0 {
            return None;
        }
        let g = gcd(num, den);
        Some(Self {
            num: num / g,
            den: den / g,
        })
    }

    /// A positive finite `f64` as a rational with denominator 10^6 (exact for values written
    /// with at most six decimals, such as a command-line ε); `None` when it rounds to 0 or is
    /// larger than 10^6.
    pub fn from_f64(x: f64) -> Option<Self> {
        if !(x.is_finite() && x > 0.0 && x <= 1e6) {
            return None;
        }
        Self::new((x * 1e6).round() as u64, 1_000_000)
    }

    /// The product, reduced; `None` on overflow.
    pub fn times(self, o: Ratio) -> Option<Ratio> {
        let g1 = gcd(self.num, o.den);
        let g2 = gcd(o.num, self.den);
        let num = (self.num / g1).checked_mul(o.num / g2)?;
        let den = (self.den / g2).checked_mul(o.den / g1)?;
        Ratio::new(num, den)
    }

    /// The inverse `den / num`.
    pub fn inv(self) -> Ratio {
        Ratio {
            num: self.den,
            den: self.num,
        }
    }

    /// As a float (for records and reports only; sampling never uses it).
    pub fn as_f64(self) -> f64 {
        self.num as f64 / self.den as f64
    }
}

/// Uniform integer in `0..n` (`n ≥ 1`), by rejection: no modulo bias.
pub fn uniform_below(rng: &mut ChaCha20Rng, n: u128) -> u128 {
    debug_assert!(n >= 1);
    if n <= u128::from(u64::MAX) {
        let n64 = n as u64;
        // the largest multiple of n that fits, as the rejection zone
        let zone = u64::MAX - (u64::MAX - n64 + 1) % n64;
        loop {
            let v = rng.next_u64();
            if v <= zone {
                return u128::from(v % n64);
            }
        }
    }
    let zone = u128::MAX - (u128::MAX - n + 1) % n;
    loop {
        let v = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
        if v <= zone {
            return v % n;
        }
    }
}

/// Bernoulli(`num / den`), `num ≤ den`.
pub fn bernoulli(rng: &mut ChaCha20Rng, num: u128, den: u128) -> bool {
    uniform_below(rng, den) < num
}

/// Bernoulli(exp(−`num/den`)) for any `num/den ≥ 0` (Canonne, Kamath & Steinke 2020, Alg. 1).
pub fn bernoulli_exp(rng: &mut ChaCha20Rng, num: u128, den: u128) -> bool {
    let whole = num / den;
    for _ in 0..whole {
        if !bernoulli_exp_unit(rng, 1, 1) {
            return false;
        }
    }
    bernoulli_exp_unit(rng, num - whole * den, den)
}

/// Bernoulli(exp(−γ)) for `γ = num/den ∈ [0, 1]`: draw A_k ~ Bernoulli(γ/k) for k = 1, 2, …
/// until one is 0; the stopping index is odd with probability exp(−γ).
fn bernoulli_exp_unit(rng: &mut ChaCha20Rng, num: u128, den: u128) -> bool {
    let mut k: u128 = 1;
    loop {
        if !bernoulli(rng, num, den * k) {
            return k % 2 == 1;
        }
        k += 1;
    }
}

/// One draw of the discrete Laplace distribution with scale `b` (`P(Z = z) ∝ exp(−|z|/b)`),
/// Canonne, Kamath & Steinke 2020, Algorithm 2 with `b = t/s`.
pub fn discrete_laplace(rng: &mut ChaCha20Rng, scale: Ratio) -> i64 {
    let (t, s) = (u128::from(scale.num), u128::from(scale.den));
    loop {
        let u = uniform_below(rng, t);
        if !bernoulli_exp(rng, u, t) {
            continue;
        }
        let mut v: u128 = 0;
        while bernoulli_exp(rng, 1, 1) {
            v += 1;
        }
        let y = (u + t * v) / s;
        let negative = bernoulli(rng, 1, 2);
        if negative && y == 0 {
            continue;
        }
        let y = i64::try_from(y).unwrap_or(i64::MAX);
        return if negative { -y } else { y };
    }
}

/// `P(Z ≥ m)` for the discrete Laplace of scale `b` and `m ≥ 1`:
/// `α^m / (1 + α)` with `α = exp(−1/b)` (for records: the δ of a noisy threshold).
pub fn tail_at_least(scale: f64, m: i64) -> f64 {
    if m <= 0 {
        return 1.0;
    }
    let a = (-1.0 / scale).exp();
    a.powi(m.min(i64::from(i32::MAX)) as i32) / (1.0 + a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    #[test]
    fn ratios_reduce_and_parse_decimals_exactly() {
        assert_eq!(Ratio::from_f64(0.5), Ratio::new(1, 2));
        assert_eq!(Ratio::from_f64(1.0), Ratio::new(1, 1));
        assert_eq!(Ratio::from_f64(0.125), Ratio::new(1, 8));
        assert_eq!(Ratio::from_f64(0.0), None);
        assert_eq!(Ratio::from_f64(1e-9), None);
        assert_eq!(Ratio::from_f64(f64::NAN), None);
        let r = Ratio::new(2, 3).unwrap().times(Ratio::new(9, 4).unwrap());
        assert_eq!(r, Ratio::new(3, 2));
        assert_eq!(Ratio::new(3, 2).unwrap().inv(), Ratio::new(2, 3).unwrap());
    }

    #[test]
    fn uniform_draws_cover_the_range_evenly() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let mut counts = [0u32; 7];
        for _ in 0..70_000 {
            counts[uniform_below(&mut rng, 7) as usize] += 1;
        }
        // each bucket 10,000 ± 5 sd (sd ≈ 93)
        assert!(
            counts.iter().all(|&c| (9_530..=10_470).contains(&c)),
            "{counts:?}"
        );
        let big = (1u128 << 100) + 7;
        assert!((0..100).all(|_| uniform_below(&mut rng, big) < big));
    }

    #[test]
    fn bernoulli_exp_has_the_right_rate() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        for (num, den) in [(0u128, 1u128), (1, 3), (1, 1), (5, 2)] {
            let n = 40_000;
            let hits = (0..n).filter(|_| bernoulli_exp(&mut rng, num, den)).count();
            let p = (-(num as f64) / den as f64).exp();
            let sd = (p * (1.0 - p) / n as f64).sqrt();
            let got = hits as f64 / n as f64;
            assert!(
                (got - p).abs() <= 5.0 * sd + 1e-12,
                "{num}/{den}: {got} vs {p}"
            );
        }
    }

    /// The empirical pmf matches `(1 − α)/(1 + α) · α^|z|` (reference: the definition of the
    /// discrete Laplace distribution), within 5 sd per value, at a whole and a fractional scale.
    #[test]
    fn discrete_laplace_matches_its_pmf() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        for scale in [Ratio::new(4, 1).unwrap(), Ratio::new(5, 2).unwrap()] {
            let n = 60_000;
            let mut counts = std::collections::BTreeMap::<i64, u32>::new();
            for _ in 0..n {
                *counts.entry(discrete_laplace(&mut rng, scale)).or_default() += 1;
            }
            let a = (-1.0 / scale.as_f64()).exp();
            for z in -6i64..=6 {
                let p = (1.0 - a) / (1.0 + a) * a.powi(z.unsigned_abs() as i32);
                let got = f64::from(counts.get(&z).copied().unwrap_or(0)) / n as f64;
                let sd = (p * (1.0 - p) / n as f64).sqrt();
                assert!(
                    (got - p).abs() < 5.0 * sd,
                    "scale {scale:?} z {z}: {got} vs {p}"
                );
            }
            let mean: f64 = counts
                .iter()
                .map(|(z, c)| *z as f64 * f64::from(*c))
                .sum::<f64>()
                / n as f64;
            assert!(mean.abs() < 0.1, "{mean}");
        }
        assert!((tail_at_least(4.0, 4) - (-1.0f64).exp() / (1.0 + (-0.25f64).exp())).abs() < 1e-12);
    }

    #[test]
    fn same_seed_same_draws() {
        let s = Ratio::new(3, 1).unwrap();
        let draw = |seed| {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            (0..50)
                .map(|_| discrete_laplace(&mut rng, s))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(9), draw(9));
        assert_ne!(draw(9), draw(10));
    }
}
