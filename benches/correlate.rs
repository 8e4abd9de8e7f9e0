//! Correlate: `threatrank::correlate::group_incidents` on seeded evidence of several sizes
//! (fresh tenants and incidents per copy of the sample, so the incident count scales too), and
//! `Linker::correlate` of synthetic alerts without an incident id at 10^4, 10^5 and 10^6 alerts.
//! Throughput is evidence rows/s (one row per synthetic alert).

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use threatrank::correlate::{group_incidents, CorrelateParams, Linker};
use threatrank::domain::{AlertId, Entities, Evidence, IncidentId, TenantId, ENTITY_COLUMNS};

fn bench_correlate(c: &mut Criterion) {
    let mut g = c.benchmark_group("correlate");
    for &n in &common::ROW_SIZES {
        let evidence = common::ingest(&common::guide_csv(n));
        let incidents = group_incidents(&evidence).incidents.len();
        eprintln!("correlate/{n}: {incidents} incidents");
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &evidence, |b, ev| {
            b.iter(|| group_incidents(black_box(ev)))
        });
    }
    g.finish();
}

/// Alerts per synthetic tenant: the tenant count grows with the batch, so entity reuse per
/// tenant (and group sizes) stay realistic at every size.
const ALERTS_PER_TENANT: usize = 2_000;

/// `n` seeded alerts without an incident id, one evidence row each, spread over 30 days per
/// tenant. Each carries a device (skewed pick among 300 per tenant: a few busy hosts), an
/// account (among 500) and, on 40% of alerts, an IP address (among 150); 30% of rows carry
/// GUIDE's "not present" device code 98799 instead of a device, and every tenant has one mail
/// relay IP that a tenth of its alerts carry (too common: the stoplist learns it).
fn synthetic_alerts(n: usize, seed: u64) -> Vec<Evidence> {
    let slot = |c: &str| ENTITY_COLUMNS.iter().position(|k| *k == c).unwrap();
    let (device, account, ip) = (slot("DeviceId"), slot("AccountObjectId"), slot("IpAddress"));
    let mut rng = common::SplitMix::new(seed);
    let skewed = |k: usize, rng: &mut common::SplitMix| {
        // u² skews picks toward small indices: busy hosts and accounts recur more.
        let u = rng.below(1 << 20) as f64 / f64::from(1 << 20);
        ((u * u) * k as f64) as u64
    };
    (0..n)
        .map(|a| {
            let tenant = (a / ALERTS_PER_TENANT) as u64;
            let base = tenant << 32;
            let mut entities = Entities::default();
            entities.codes[device] = Some(if rng.below(10) < 3 {
                98_799
            } else {
                base | skewed(300, &mut rng)
            });
            entities.codes[account] = Some(base | 1_000 | skewed(500, &mut rng));
            match rng.below(10) {
                0 => entities.codes[ip] = Some(base | 5_000),
                1..=4 => entities.codes[ip] = Some(base | 6_000 | rng.below(150) as u64),
                _ => {}
            }
            Evidence {
                record: a as u64,
                id: a as u64,
                tenant: TenantId(tenant),
                incident: IncidentId(a as u64),
                incident_given: false,
                alert: AlertId(a as u64),
                timestamp: 1_717_000_000 + rng.below(30 * 86_400) as i64,
                detector: String::new(),
                title: String::new(),
                category: String::new(),
                techniques: Vec::new(),
                grade: None,
                entity_type: String::new(),
                impacted: true,
                entities,
                ..Default::default()
            }
        })
        .collect()
}

fn bench_link(c: &mut Criterion) {
    let params = CorrelateParams::default().check().unwrap();
    let mut g = c.benchmark_group("correlate_link");
    for n in [10_000, 100_000, 1_000_000] {
        // Learnt once per size from another seeded batch of the same tenants, as training would.
        let linker = Linker::learn(&synthetic_alerts(n, common::SEED ^ 1), &params);
        let mut evidence = synthetic_alerts(n, common::SEED);
        common::SplitMix::new(common::SEED).shuffle(&mut evidence);
        let corr = linker.correlate(&evidence).unwrap();
        let multi = corr.incidents.iter().filter(|i| i.alerts.len() > 1);
        let largest = corr.incidents.iter().map(|i| i.alerts.len()).max();
        eprintln!(
            "correlate_link/{n}: {} stopped entities, {} candidate threats ({} with > 1 alert), \
             largest {largest:?} alerts",
            linker.stoplist().len(),
            corr.incidents.len(),
            multi.count()
        );
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("linker", n), &evidence, |b, ev| {
            b.iter(|| linker.correlate(black_box(ev)).unwrap())
        });
        // Baseline on the same rows: grouping by the stand-in ids (one incident per alert).
        g.bench_with_input(
            BenchmarkId::new("group_incidents", n),
            &evidence,
            |b, ev| b.iter(|| group_incidents(black_box(ev))),
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = bench_correlate, bench_link
}
criterion_main!(benches);
