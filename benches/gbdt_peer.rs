//! GBDT against LightGBM / XGBoost on the same synthetic matrices (issue 3).
//!
//! The data is `benches/peers/SYNTHETIC.md`, bit for bit: 30 `f32` features, 3 classes, train
//! seed 1, test seed 2. The Python side is `benches/peers/speed.py`. At startup the bench checks
//! its generator against the checksums of `SYNTHETIC.md` (1,000 and 200,000 rows, both seeds)
//! and panics on a mismatch, so the two sides cannot drift apart silently.
//!
//! The GBDT recipe is LightGBM's in `speed.py`: 100 rounds on all rows (no early stopping, no
//! holdout), depth 6, learning rate 0.1, no row or column sampling, 256 bins, no L2 penalty
//! (LightGBM's `lambda_l2` defaults to 0). LightGBM's `min_data_in_leaf = 20` counts rows;
//! hessboost only bounds the hessian sum of a child. With softprob's hessian `2p(1 − p)`, 20 rows
//! at the start (p = 1/3) weigh 20 · 4/9 ≈ 8.9, so `min_child_weight = 8.9` is taken as
//! the equivalent (see `MIN_CHILD_WEIGHT`).
//!
//! Thread counts: each timed call runs inside `rayon::ThreadPool::install` of a pool of 1 or 2
//! threads. hessboost trains on the current rayon pool when its `nthread` is unset, which is
//! how `models::gbdt` configures it (`hessboost::training::train::with_thread_pool`), and its
//! predictors check `rayon::current_num_threads()` before they split rows into parallel blocks.
//!
//! Groups:
//! - `gbdt_peer/train/{threads}/{rows}`: `GbdtValidParams::fit` (it copies the matrix into
//!   hessboost's, bins it, then boosts 100 rounds), at 20,000 rows (quick check) and 200,000 rows;
//! - `gbdt_peer/score/{threads}/200000`: `Scorer::score_into` (probabilities) of the 200k test
//!   matrix, in rows/s;
//! - `gbdt_peer/score_row`: latency of `score_into` on a 1-row matrix (no thread pool involved).
//!
//! Outside the timed loops it prints, once, the test log-loss and accuracy of the 200k model (to
//! compare with the figures of `benches/peers/README.md`), the wall and process CPU time of one
//! fit per thread count, and the load average at the start and the end. It also prints the
//! test metrics at learning rate 0.1 × 4/3, LightGBM's step size (see `fit_and_report`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use rayon::{ThreadPool, ThreadPoolBuilder};
use threatrank::matrix::FeatureMatrix;
use threatrank::models::{Fit, FittedGbdt, GbdtParams, GbdtValidParams, Scorer, N_CLASSES};

/// Features per row.
const COLS: usize = 30;
/// splitmix64 outputs consumed per row.
const DRAWS_PER_ROW: usize = 32;
/// Seeds of the train and test matrices (`SYNTHETIC.md`).
const TRAIN_SEED: u64 = 1;
const TEST_SEED: u64 = 2;
/// Rows of the peer comparison (train and test alike) and of the quick training check.
const ROWS: usize = 200_000;
const QUICK_ROWS: usize = 20_000;
/// Thread counts compared with `speed.py --threads 1,2`.
const THREADS: [usize; 2] = [1, 2];
/// LightGBM's `min_data_in_leaf = 20` in hessian units: 20 rows × 2 · (1/3) · (2/3).
const MIN_CHILD_WEIGHT: f64 = 20.0 * 2.0 * (1.0 / 3.0) * (2.0 / 3.0);

/// Checksums of `SYNTHETIC.md` ("Checksums").
struct Checksums {
    seed: u64,
    rows: usize,
    feature_bits_sum: u64,
    feature_sum_seq: f64,
    label_counts: [usize; 3],
    label_index_sum: u64,
}

/// The table of `SYNTHETIC.md`, copied verbatim.
const EXPECTED: [Checksums; 4] = [
    Checksums {
        seed: TRAIN_SEED,
        rows: 1_000,
        feature_bits_sum: 64254743129381,
        feature_sum_seq: -254.77942835323483,
        label_counts: [338, 377, 285],
        label_index_sum: 463390,
    },
    Checksums {
        seed: TEST_SEED,
        rows: 1_000,
        feature_bits_sum: 63724806690494,
        feature_sum_seq: -29.272778259593906,
        label_counts: [336, 362, 302],
        label_index_sum: 481393,
    },
    Checksums {
        seed: TRAIN_SEED,
        rows: 200_000,
        feature_bits_sum: 12760162775515636,
        feature_sum_seq: -255.7033616437261,
        label_counts: [68508, 73419, 58073],
        label_index_sum: 18940442345,
    },
    Checksums {
        seed: TEST_SEED,
        rows: 200_000,
        feature_bits_sum: 12758499680080335,
        feature_sum_seq: 151.63109244596723,
        label_counts: [68752, 72995, 58253],
        label_index_sum: 18958873006,
    },
];

/// splitmix64, as in `SYNTHETIC.md` (and `benches/common/mod.rs`).
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// `f64` in `[0, 1)` from the top 53 bits.
fn unit(d: u64) -> f64 {
    (d >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0)
}

/// (row-major `n × 30` features, labels) of the synthetic matrix seeded with `seed`: the checked
/// transcription of `SYNTHETIC.md`, with labels as `u8` (what `Fit::fit` takes).
fn synthetic(n: usize, seed: u64) -> (Vec<f32>, Vec<u8>) {
    let mut g = SplitMix(seed);
    let (mut x, mut y) = (Vec::with_capacity(n * COLS), Vec::with_capacity(n));
    for _ in 0..n {
        let mut d = [0u64; DRAWS_PER_ROW];
        for v in &mut d {
            *v = g.next_u64();
        }
        let start = x.len();
        x.extend(d[..COLS].iter().map(|&dj| (unit(dj) * 2.0 - 1.0) as f32));
        let a: [f64; 10] = std::array::from_fn(|j| f64::from(x[start + j]));
        // Left to right, no mul_add: the same bits as numpy.
        let s0 = 1.5 * a[0] - a[1] + 2.0 * a[2] * a[3] + if a[4] > 0.25 { 1.0 } else { 0.0 };
        let s1 = 1.2 * a[1] - 0.5 * a[0] + 2.0 * a[5] * a[5] - 0.8 * a[6] - 0.6
            + if a[0] * a[7] > 0.0 { 0.9 } else { 0.0 };
        let s2 = a[3] + 1.5 * (a[2] - a[4]).abs() - 0.5 + 1.5 * a[8] * a[9];
        let s = [s0, s1, s2];
        let mut clean = 0;
        for k in 1..3 {
            if s[k] > s[clean] {
                clean = k;
            }
        }
        y.push(if unit(d[30]) < 0.12 {
            (d[31] % 3) as u8
        } else {
            clean as u8
        });
    }
    (x, y)
}

/// Panics unless the first `want.rows` rows of `(x, y)` have the checksums of `SYNTHETIC.md`.
fn verify(x: &[f32], y: &[u8], want: &Checksums) {
    let (x, y) = (&x[..want.rows * COLS], &y[..want.rows]);
    let bits = x
        .iter()
        .fold(0u64, |s, v| s.wrapping_add(u64::from(v.to_bits())));
    let sum = x.iter().fold(0.0f64, |s, &v| s + f64::from(v));
    let mut counts = [0usize; 3];
    for &c in y {
        counts[c as usize] += 1;
    }
    let index_sum: u64 = y
        .iter()
        .enumerate()
        .map(|(i, &c)| i as u64 * u64::from(c))
        .sum();
    let got = (bits, sum.to_bits(), counts, index_sum);
    let expected = (
        want.feature_bits_sum,
        want.feature_sum_seq.to_bits(),
        want.label_counts,
        want.label_index_sum,
    );
    assert_eq!(
        got, expected,
        "synthetic matrix (seed {}, {} rows) differs from benches/peers/SYNTHETIC.md: \
         (feature_bits_sum, feature_sum_seq bits, label_counts, label_index_sum)",
        want.seed, want.rows
    );
}

/// Train and test matrices of `n` rows (both seeds), checked against every checksum row that
/// fits in `n`.
fn matrices(n: usize) -> ((FeatureMatrix, Vec<u8>), (FeatureMatrix, Vec<u8>)) {
    let build = |seed: u64| {
        let (x, y) = synthetic(n, seed);
        for want in EXPECTED.iter().filter(|c| c.seed == seed && c.rows <= n) {
            verify(&x, &y, want);
        }
        (
            FeatureMatrix::from_vec(n, COLS, x).expect("n × 30 values"),
            y,
        )
    };
    (build(TRAIN_SEED), build(TEST_SEED))
}

/// LightGBM's recipe of `speed.py` as GBDT parameters.
fn params() -> GbdtValidParams {
    with_learning_rate(0.1)
}

/// The recipe with another learning rate.
fn with_learning_rate(lr: f64) -> GbdtValidParams {
    with_recipe(lr, 100)
}

/// Rounds of the "same total step" recipe: LightGBM's 100 rounds take steps 4/3 of ours at the
/// same learning rate (see `fit_and_report`), so 133 of ours at 0.1 walk as far.
const SAME_STEP_ROUNDS: usize = 133;

/// The recipe with another learning rate and round count.
fn with_recipe(lr: f64, rounds: usize) -> GbdtValidParams {
    GbdtParams::default()
        .max_rounds(rounds)
        .early_stopping_rounds(0)
        .max_depth(6)
        .learning_rate(lr)
        .subsample(1.0)
        .colsample_bytree(1.0)
        .min_child_weight(MIN_CHILD_WEIGHT)
        .min_child_groups(1)
        .lambda(0.0)
        .alpha(0.0)
        .max_bin(256)
        .seed(0)
        .check()
        .expect("peer recipe is valid")
}

fn pool(threads: usize) -> ThreadPool {
    ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("rayon pool")
}

/// Process CPU seconds (user + system, all threads) from `/proc/self/stat`, assuming the usual
/// 100 clock ticks per second; `None` off Linux.
fn process_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Mean multiclass log-loss (probabilities clipped to `[1e-15, 1 − 1e-15]`, as sklearn and
/// `speed.py`) and accuracy (argmax, first on ties).
fn logloss_accuracy(p: &[f32], y: &[u8]) -> (f64, f64) {
    let (mut loss, mut hits) = (0.0f64, 0usize);
    for (row, &c) in p.chunks_exact(N_CLASSES).zip(y) {
        loss -= f64::from(row[c as usize]).clamp(1e-15, 1.0 - 1e-15).ln();
        let mut best = 0;
        for k in 1..N_CLASSES {
            if row[k] > row[best] {
                best = k;
            }
        }
        hits += usize::from(best == c as usize);
    }
    (loss / y.len() as f64, hits as f64 / y.len() as f64)
}

/// Fits the 200k model once per thread count (wall and CPU printed), checks that every thread
/// count gives the same probabilities, and prints the test metrics.
fn fit_and_report(
    pools: &[(usize, ThreadPool)],
    train: &(FeatureMatrix, Vec<u8>),
    test: &(FeatureMatrix, Vec<u8>),
) -> FittedGbdt {
    let p = params();
    eprintln!("gbdt_peer: {:?}", p.params());
    let mut fitted: Option<(FittedGbdt, Vec<f32>)> = None;
    for (threads, pool) in pools {
        let in_pool = pool.install(rayon::current_num_threads);
        let (cpu0, t0) = (process_cpu_s(), Instant::now());
        let m = pool.install(|| p.fit(&train.0, &train.1)).expect("fit");
        let wall = t0.elapsed().as_secs_f64();
        let cpu = process_cpu_s().zip(cpu0).map(|(b, a)| b - a);
        let probs = m.score(&test.0).expect("score");
        eprintln!(
            "gbdt_peer: one fit on {ROWS} rows, {threads} thread(s) (pool reports {in_pool}): \
             wall {wall:.2} s, process CPU {} s",
            cpu.map_or("?".into(), |c| format!("{c:.2}"))
        );
        match &fitted {
            Some((_, first)) => assert!(
                first == &probs,
                "GBDT probabilities differ between thread counts"
            ),
            None => fitted = Some((m, probs)),
        }
    }
    let (model, probs) = fitted.expect("at least one thread count");
    let (loss, acc) = logloss_accuracy(&probs, &test.1);
    eprintln!(
        "gbdt_peer: test ({ROWS} rows, seed {TEST_SEED}) log-loss {loss:.4}, accuracy {acc:.4} \
         (LightGBM 0.5289 / 0.8380, XGBoost 0.5453 / 0.8238; same on every thread count)"
    );
    // LightGBM's multiclass hessian is k/(k-1)·p(1-p) = 1.5·p(1-p) for 3 classes, hessboost's
    // (as XGBoost's) 2·p(1-p): LightGBM's leaf values -G/H, hence its steps, are 4/3 of ours
    // at the same learning rate. Printed for the comparison; the timed recipe keeps 0.1.
    let lr = 0.1 * 4.0 / 3.0;
    let (_, widest) = pools.last().expect("at least one thread count");
    let same_steps = widest
        .install(|| with_learning_rate(lr).fit(&train.0, &train.1))
        .expect("fit");
    let (loss, acc) = logloss_accuracy(&same_steps.score(&test.0).expect("score"), &test.1);
    eprintln!(
        "gbdt_peer: same, learning rate {lr:.4} (LightGBM's step size at 0.1): \
         log-loss {loss:.4}, accuracy {acc:.4}"
    );
    let same_total = widest
        .install(|| with_recipe(0.1, SAME_STEP_ROUNDS).fit(&train.0, &train.1))
        .expect("fit");
    let (loss, acc) = logloss_accuracy(&same_total.score(&test.0).expect("score"), &test.1);
    eprintln!(
        "gbdt_peer: same, {SAME_STEP_ROUNDS} rounds at 0.1 (LightGBM's total step length; timed \
         as gbdt_peer/train_same_total_step): log-loss {loss:.4}, accuracy {acc:.4}"
    );
    model
}

fn bench_gbdt_peer(c: &mut Criterion) {
    eprintln!("gbdt_peer: load average at start {}", loadavg());
    let (train, test) = matrices(ROWS);
    let quick = {
        let x = train.0.select_rows(&(0..QUICK_ROWS).collect::<Vec<_>>());
        (x, train.1[..QUICK_ROWS].to_vec())
    };
    eprintln!("gbdt_peer: synthetic matrices match benches/peers/SYNTHETIC.md");
    let pools: Vec<(usize, ThreadPool)> = THREADS.iter().map(|&t| (t, pool(t))).collect();
    let model = fit_and_report(&pools, &train, &test);
    let p = params();

    let mut g = c.benchmark_group("gbdt_peer/train");
    g.sampling_mode(SamplingMode::Flat);
    for (threads, pool) in &pools {
        for (x, y) in [&quick, &train] {
            g.throughput(Throughput::Elements(x.n_rows() as u64));
            g.bench_with_input(
                BenchmarkId::new(threads.to_string(), x.n_rows()),
                x,
                |b, x| b.iter(|| pool.install(|| p.fit(black_box(x), y).expect("fit"))),
            );
        }
    }
    g.finish();

    let same_total = with_recipe(0.1, SAME_STEP_ROUNDS);
    let mut g = c.benchmark_group("gbdt_peer/train_same_total_step");
    g.sampling_mode(SamplingMode::Flat);
    for (threads, pool) in &pools {
        g.throughput(Throughput::Elements(train.0.n_rows() as u64));
        g.bench_with_input(
            BenchmarkId::new(threads.to_string(), train.0.n_rows()),
            &train.0,
            |b, x| b.iter(|| pool.install(|| same_total.fit(black_box(x), &train.1).expect("fit"))),
        );
    }
    g.finish();

    let mut g = c.benchmark_group("gbdt_peer/score");
    let mut out = vec![0f32; test.0.n_rows() * N_CLASSES];
    g.throughput(Throughput::Elements(test.0.n_rows() as u64));
    for (threads, pool) in &pools {
        g.bench_with_input(
            BenchmarkId::new(threads.to_string(), test.0.n_rows()),
            &test.0,
            |b, x| {
                b.iter(|| {
                    pool.install(|| model.score_into(black_box(x), &mut out))
                        .unwrap()
                })
            },
        );
    }
    g.finish();

    // A single row never enters rayon (hessboost's small-batch path), so it is timed on the
    // calling thread: `install` would add a cross-thread hop of a few µs to every call.
    let one = test.0.select_rows(&[0]);
    let mut out = [0f32; N_CLASSES];
    c.bench_function("gbdt_peer/score_row", |b| {
        b.iter(|| model.score_into(black_box(&one), &mut out).unwrap())
    });
    eprintln!("gbdt_peer: load average at end {}", loadavg());
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args()
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_gbdt_peer
}
criterion_main!(benches);
