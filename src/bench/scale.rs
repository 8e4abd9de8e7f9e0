//! The report's scale section: end-to-end scoring (CSV in → score CSV out) of synthetic
//! GUIDE-shaped files at growing sizes, with time and peak memory, beside the time to merely
//! parse the same file with the `csv` crate and the pandas + LightGBM pipeline of
//! `benches/peers/pipeline.py` on the same file.
//!
//! Every size gets a fresh file from [`crate::synth`] (fitted to `fit`); each system runs as
//! its own process (`threatrank score … --stats-json`, the peers' `run pipeline.py … --json`)
//! so peak memory is that process's own (`VmHWM`), then the file is deleted.

use super::{BenchError, ScaleReport, ScaleRow};
use crate::synth::{self, Profile, SynthParams};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Scale-run parameters (unchecked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleParams {
    /// Input sizes in rows, e.g. 10^4 … 10^7.
    pub sizes: Vec<u64>,
    /// Tenants of the synthetic files. Default 1,000.
    pub tenants: u64,
    /// Seed of the synthetic files. Default 42.
    pub seed: u64,
    /// GUIDE file the synthetic data is fitted to (also the peers' training file).
    pub fit: PathBuf,
    /// Artifact to score with.
    pub model: PathBuf,
    /// The `threatrank` binary to run (`std::env::current_exe()` from the CLI).
    pub threatrank: PathBuf,
    /// Folder of the scratch files (created; the big files are deleted after each size).
    pub work_dir: PathBuf,
    /// Folder of the peers' `run` script; `None`: no pandas + LightGBM runs.
    pub peers_dir: Option<PathBuf>,
    /// Largest size the pandas pipeline runs at (it needs ~9 GB and ~20 min at 10^7).
    pub peer_max_rows: u64,
    /// Largest size `convert` and DataFusion over Parquet run at (feature `datafusion`;
    /// converting into tenant × day partitions is slow: ~100 s per 10^6 rows here).
    pub parquet_max_rows: u64,
}

impl ScaleParams {
    /// Checks sizes (1 … 10^9 rows, at least one) and tenants (≥ 1).
    pub fn check(&self) -> Result<(), BenchError> {
        if self.sizes.is_empty() || self.sizes.iter().any(|&n| n == 0 || n > 1_000_000_000) {
            return Err(BenchError::Param {
                name: "scale",
                reason: format!("sizes must be 1 … 10^9 rows, got {:?}", self.sizes),
            });
        }
        if self.tenants == 0 {
            return Err(BenchError::Param {
                name: "scale_tenants",
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

fn fail(what: &str, e: impl std::fmt::Display) -> BenchError {
    BenchError::Param {
        name: "scale",
        reason: format!("{what}: {e}"),
    }
}

/// Runs every size; `progress` gets one line per step.
pub fn run(p: &ScaleParams, progress: &mut dyn FnMut(&str)) -> Result<ScaleReport, BenchError> {
    p.check()?;
    std::fs::create_dir_all(&p.work_dir).map_err(|e| fail(&p.work_dir.display().to_string(), e))?;
    let profile = Profile::fit_file(&p.fit).map_err(|e| fail("fitting the synthetic data", e))?;
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rows = Vec::new();
    for &n in &p.sizes {
        let input = p.work_dir.join(format!("synth-{n}.csv"));
        progress(&format!("scale {n} rows: writing {}", input.display()));
        let sp = SynthParams {
            rows: n,
            tenants: p.tenants,
            seed: p.seed,
            ..SynthParams::default()
        }
        .check()
        .map_err(|e| fail("synthetic data parameters", e))?;
        let f = std::fs::File::create(&input).map_err(|e| fail(&input.display().to_string(), e))?;
        synth::generate(&profile, &sp, std::io::BufWriter::with_capacity(1 << 20, f))
            .map_err(|e| fail("writing the synthetic data", e))?;
        let bytes = std::fs::metadata(&input).map_or(0, |m| m.len());

        progress(&format!("scale {n} rows: csv crate parse"));
        let t = Instant::now();
        let parsed = parse_only(&input)?;
        rows.push(ScaleRow {
            system: "csv crate parse".into(),
            rows: n,
            seconds: t.elapsed().as_secs_f64(),
            peak_rss_bytes: None,
            note: format!(
                "csv::Reader + StringRecord over the {:.0} MB file, 1 thread, nothing else ({parsed} records)",
                bytes as f64 / 1e6
            ),
        });

        for (system, explain) in [
            ("threatrank score", "none"),
            ("threatrank score, reasons", "10"),
        ] {
            progress(&format!("scale {n} rows: {system}"));
            let out = p.work_dir.join(format!("scored-{n}.csv"));
            let stats = p.work_dir.join(format!("stats-{n}.json"));
            let (seconds, s) = run_with_stats(
                p,
                "threatrank score",
                Command::new(&p.threatrank)
                    .args(["score", "--model"])
                    .arg(&p.model)
                    .arg("--input")
                    .arg(&input)
                    .arg("--output")
                    .arg(&out)
                    .args(["--explain", explain]),
                &stats,
            )?;
            rows.push(ScaleRow {
                system: system.into(),
                rows: n,
                seconds,
                peak_rss_bytes: s["peak_rss_bytes"].as_u64(),
                note: format!(
                    "process wall time (model load included), {nproc} threads, --explain {explain}: {} incidents, {} explained, {} partition(s)",
                    s["incidents"], s["explained"], s["partitions"]
                ),
            });
            let _ = std::fs::remove_file(&out);
            let _ = std::fs::remove_file(crate::ingest::rejects_path_for(&out));
            let _ = std::fs::remove_file(&stats);
        }

        #[cfg(feature = "datafusion")]
        datafusion_rows(p, n, &input, nproc, &mut rows, progress)?;

        if let Some(dir) = p.peers_dir.as_ref().filter(|_| n <= p.peer_max_rows) {
            progress(&format!("scale {n} rows: pandas + LightGBM"));
            let out = p.work_dir.join(format!("peer-{n}.csv"));
            let meta = p.work_dir.join(format!("peer-{n}.json"));
            let r = Command::new(dir.join("run"))
                .arg("pipeline.py")
                .arg("--train")
                .arg(&p.fit)
                .arg("--input")
                .arg(&input)
                .arg("--out")
                .arg(&out)
                .arg("--json")
                .arg(&meta)
                .args(["--threads", &nproc.to_string()])
                .output();
            match r {
                Ok(o) if o.status.success() => {
                    let m: serde_json::Value = std::fs::read_to_string(&meta)
                        .ok()
                        .and_then(|t| serde_json::from_str(&t).ok())
                        .unwrap_or_default();
                    if let Some(total) = m["seconds"]["total"].as_f64() {
                        rows.push(ScaleRow {
                            system: "pandas + LightGBM".into(),
                            rows: n,
                            seconds: total,
                            peak_rss_bytes: m["peak_rss_bytes"].as_u64(),
                            note: format!(
                                "benches/peers/pipeline.py: read_csv → features → predict → to_csv, {nproc} threads; training on the fit file ({:.1} s) not counted",
                                m["train_seconds"].as_f64().unwrap_or(f64::NAN)
                            ),
                        });
                    }
                }
                Ok(o) => progress(&format!(
                    "scale {n} rows: pandas + LightGBM not run: exit {}: {}",
                    o.status.code().unwrap_or(-1),
                    String::from_utf8_lossy(&o.stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                )),
                Err(e) => progress(&format!("scale {n} rows: pandas + LightGBM not run: {e}")),
            }
            let _ = std::fs::remove_file(&out);
            let _ = std::fs::remove_file(&meta);
        }
        let _ = std::fs::remove_file(&input);
    }
    Ok(ScaleReport {
        rows,
        machine: machine_words(nproc),
    })
}

/// The DataFusion rows of one size: `threatrank sql` scoring every incident of the CSV, then
/// (up to [`ScaleParams::parquet_max_rows`]) of the same rows converted to a Parquet store
/// (conversion timed apart).
#[cfg(feature = "datafusion")]
fn datafusion_rows(
    p: &ScaleParams,
    n: u64,
    input: &Path,
    nproc: usize,
    rows: &mut Vec<ScaleRow>,
    progress: &mut dyn FnMut(&str),
) -> Result<(), BenchError> {
    let store = p.work_dir.join(format!("store-{n}"));
    let _ = std::fs::remove_dir_all(&store);
    if n > p.parquet_max_rows {
        return datafusion_row(p, n, input, None, nproc, rows, progress);
    }
    progress(&format!("scale {n} rows: threatrank convert → Parquet"));
    let convert_seconds = run_timed(
        p,
        "threatrank convert",
        Command::new(&p.threatrank)
            .args(["convert", "--input"])
            .arg(input)
            .arg("--out")
            .arg(&store),
    )?;
    let store_bytes: u64 = crate::ingest::parquet_files(&store)
        .map(|fs| {
            fs.iter()
                .filter_map(|f| std::fs::metadata(f).ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    datafusion_row(p, n, input, None, nproc, rows, progress)?;
    let store_words = format!(
        "a {:.0} MB zstd Parquet store (tenant × day partitions; `convert` took {convert_seconds:.1} s, not counted)",
        store_bytes as f64 / 1e6
    );
    let r = datafusion_row(p, n, &store, Some(&store_words), nproc, rows, progress);
    let _ = std::fs::remove_dir_all(&store);
    let _ = std::fs::remove_file(crate::ingest::rejects_path_for(&store));
    r
}

/// One DataFusion row: `threatrank sql` scoring every incident of `what` (the CSV, or the
/// Parquet store described by `store`), with its default memory limit.
#[cfg(feature = "datafusion")]
fn datafusion_row(
    p: &ScaleParams,
    n: u64,
    what: &Path,
    store: Option<&str>,
    nproc: usize,
    rows: &mut Vec<ScaleRow>,
    progress: &mut dyn FnMut(&str),
) -> Result<(), BenchError> {
    let system = match store {
        Some(_) => "DataFusion SQL, Parquet",
        None => "DataFusion SQL, CSV",
    };
    progress(&format!("scale {n} rows: {system}"));
    let out = p.work_dir.join(format!("df-{n}.csv"));
    let stats = p.work_dir.join(format!("df-{n}.json"));
    let (seconds, s) = run_with_stats(
        p,
        "threatrank sql",
        Command::new(&p.threatrank)
            .args(["sql", "--model"])
            .arg(&p.model)
            .arg("--input")
            .arg(what)
            .args(["--query", crate::sql::SCALE_QUERY, "--output"])
            .arg(&out),
        &stats,
    )?;
    rows.push(ScaleRow {
        system: system.into(),
        rows: n,
        seconds,
        peak_rss_bytes: s["peak_rss_bytes"].as_u64(),
        note: format!(
            "process wall time, {nproc} threads, memory limit {} MiB (spills beyond): threatrank_features GROUP BY tenant, incident → threatrank_score over {}, {} incident rows written",
            crate::sql::run::MemoryLimit::DEFAULT_MIB,
            store.unwrap_or("the CSV"),
            s["rows"]
        ),
    });
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(&stats);
    Ok(())
}

/// Runs `cmd` to the end: its wall seconds; a failed run is an error quoting its stderr.
fn run_timed(p: &ScaleParams, what: &str, cmd: &mut Command) -> Result<f64, BenchError> {
    let t = Instant::now();
    let o = cmd
        .output()
        .map_err(|e| fail(&p.threatrank.display().to_string(), e))?;
    let seconds = t.elapsed().as_secs_f64();
    if !o.status.success() {
        return Err(fail(
            what,
            String::from_utf8_lossy(&o.stderr).trim().to_string(),
        ));
    }
    Ok(seconds)
}

/// [`run_timed`] with `--stats-json STATS` appended: its wall seconds and the figures it wrote
/// (an empty object when it wrote none).
fn run_with_stats(
    p: &ScaleParams,
    what: &str,
    cmd: &mut Command,
    stats: &Path,
) -> Result<(f64, serde_json::Value), BenchError> {
    let seconds = run_timed(p, what, cmd.arg("--stats-json").arg(stats))?;
    let s = std::fs::read_to_string(stats)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    Ok((seconds, s))
}

/// Records in a CSV file, read with `csv::Reader` into one reused `StringRecord` (the floor
/// any CSV-in tool pays).
pub fn parse_only(path: &Path) -> Result<u64, BenchError> {
    let mut r = csv::Reader::from_path(path).map_err(|e| fail(&path.display().to_string(), e))?;
    let mut rec = csv::StringRecord::new();
    let mut n = 0u64;
    while r
        .read_record(&mut rec)
        .map_err(|e| fail(&path.display().to_string(), e))?
    {
        n += 1;
    }
    Ok(n)
}

fn machine_words(nproc: usize) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.into());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    format!(
        "{nproc} logical CPUs, {cpu}, {}; load average at the end {load}",
        std::env::consts::OS
    )
}
