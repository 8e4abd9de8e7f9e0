//! What `threatrank sql` and `threatrank hunt run` do: build the session (in process, or on a
//! Ballista cluster), run the query, stream the result to CSV or print it.

use super::{Engine, SqlError};
use crate::pipeline::PipelineError;
use crate::signals::Knowledge;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{SessionConfig, SessionContext};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A `threatrank sql` run.
#[derive(Debug, Clone)]
pub struct SqlRun {
    /// model artifact
    pub model: PathBuf,
    /// GUIDE CSV or Parquet file/folder
    pub input: PathBuf,
    /// the query
    pub query: String,
    /// CSV to write (else a table on stdout)
    pub output: Option<PathBuf>,
    /// DataFusion target partitions
    pub partitions: Option<usize>,
    /// Ballista scheduler URL (`df://HOST:PORT`)
    #[cfg(feature = "distributed")]
    pub cluster: Option<String>,
    /// give up after this long (a cluster that lost an executor may never answer)
    pub timeout: Option<std::time::Duration>,
    /// memory the local plan may hold ([`MemoryLimit`]); beyond it, aggregation spills
    pub memory: MemoryLimit,
    /// where to write the run's figures
    pub stats_json: Option<PathBuf>,
}

/// A multi-threaded tokio runtime for DataFusion.
pub fn runtime() -> Result<tokio::runtime::Runtime, SqlError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            SqlError::DataFusion(datafusion::error::DataFusionError::External(Box::new(e)))
        })
}

/// How much memory a local DataFusion plan may hold.
///
/// DataFusion's default pool is unbounded: `threatrank_features` keeps every incident's raw
/// rows until its group is complete, so a hash aggregation over 10^7 rows would hold the
/// whole input (several times over, with Arrow buffers) and run out of memory. Under a limit,
/// the final aggregation sorts its groups' states and spills them to the OS temporary folder,
/// then merges the sorted runs and emits incidents as they complete: memory stays near the
/// limit whatever the input's size, at the cost of writing the state to disk once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimit(Option<usize>);

impl MemoryLimit {
    /// The default: 512 MiB. Measured on 10^6 synthetic rows (2 cores): unbounded 1.5 GB peak
    /// in 10.4 s; 512 MiB 0.72 GB in 8.9 s; 256 MiB 0.49 GB in 9.1 s (same scores; spilled
    /// runs merge as fast as the hash table they replace).
    pub const DEFAULT_MIB: usize = 512;

    /// A limit of `mib` MiB; 0 means unbounded (DataFusion's default pool, no spilling).
    pub fn mib(mib: usize) -> MemoryLimit {
        MemoryLimit((mib > 0).then(|| mib.saturating_mul(1 << 20)))
    }

    /// The limit in bytes, if any.
    pub fn bytes(self) -> Option<usize> {
        self.0
    }

    fn runtime_env(self) -> Result<Arc<RuntimeEnv>, SqlError> {
        let mut b = RuntimeEnvBuilder::new();
        if let Some(bytes) = self.0 {
            // fair shares among spilling operators (the partial and the final aggregation
            // both hold incident state); the tracker names the largest consumers when a
            // non-spilling operator still runs out
            b = b.with_memory_pool(Arc::new(TrackConsumersPool::new(
                FairSpillPool::new(bytes),
                std::num::NonZeroUsize::new(5).expect("5 > 0"),
            )));
        }
        Ok(b.build_arc()?)
    }
}

impl Default for MemoryLimit {
    fn default() -> Self {
        MemoryLimit::mib(Self::DEFAULT_MIB)
    }
}

/// A local session with the functions, `alerts` and the views.
pub async fn local_session(
    engine: Arc<Engine>,
    input: &Path,
    partitions: Option<usize>,
    memory: MemoryLimit,
) -> Result<SessionContext, SqlError> {
    let mut config = SessionConfig::new();
    if let Some(p) = partitions.filter(|&p| p > 0) {
        config = config.with_target_partitions(p);
    }
    let ctx = SessionContext::new_with_config_rt(config, memory.runtime_env()?);
    super::register_functions(&ctx, engine);
    let cols = super::register_alerts(&ctx, input).await?;
    super::create_views(&ctx, &cols).await?;
    Ok(ctx)
}

/// Runs `run.query`; returns the rows written or printed.
pub fn sql(run: &SqlRun, kn: Knowledge) -> Result<(), PipelineError> {
    let started = std::time::Instant::now();
    let engine = Arc::new(Engine::load(&run.model, kn)?);
    let rt = runtime()?;
    let work = async {
        #[cfg(feature = "distributed")]
        let ctx = match &run.cluster {
            Some(url) => {
                // the plan runs under the executors' own limits
                crate::sql::cluster::remote_session(url, engine.clone(), &run.input).await?
            }
            None => local_session(engine.clone(), &run.input, run.partitions, run.memory).await?,
        };
        #[cfg(not(feature = "distributed"))]
        let ctx = local_session(engine.clone(), &run.input, run.partitions, run.memory).await?;
        let df = ctx.sql(&run.query).await?;
        let stream = df.execute_stream().await?;
        let tag = engine.model_tag().to_string();
        match &run.output {
            Some(out) => write_csv(stream, out, Some(&tag)).await,
            None => print_table(stream, Some(&tag)).await,
        }
    };
    let rows = rt.block_on(async {
        match run.timeout {
            Some(limit) => tokio::time::timeout(limit, work).await.map_err(|_| {
                SqlError::Timeout(format!(
                    "no complete answer within {} s (on a cluster: an executor may have been \
                     lost with shuffle data the query needs); no output written",
                    limit.as_secs_f64()
                ))
            })?,
            None => work.await,
        }
    });
    let rows = match rows {
        Ok(r) => r,
        Err(e) => {
            // a query cut short leaves nothing behind, not even its partial file
            if let Some(out) = &run.output {
                let _ = std::fs::remove_file(partial_path(out));
            }
            #[cfg(feature = "distributed")]
            let e = match run.cluster {
                Some(_) => e,
                None => e.with_memory_limit(run.memory),
            };
            #[cfg(not(feature = "distributed"))]
            let e = e.with_memory_limit(run.memory);
            return Err(e.into());
        }
    };
    eprintln!(
        "{rows} row(s) in {:.2} s{}",
        started.elapsed().as_secs_f64(),
        run.output
            .as_ref()
            .map(|p| format!(", written to {}", p.display()))
            .unwrap_or_default()
    );
    if let Some(p) = &run.stats_json {
        let stats = serde_json::json!({
            "seconds": started.elapsed().as_secs_f64(),
            "peak_rss_bytes": crate::stream::peak_rss_bytes(),
            "rows": rows,
            "partitions": run.partitions,
        });
        write_stats(p, &stats)?;
    }
    Ok(())
}

fn write_stats(p: &Path, stats: &serde_json::Value) -> Result<(), PipelineError> {
    std::fs::write(p, stats.to_string() + "\n").map_err(|e| {
        crate::report::ReportError::Write {
            file: p.display().to_string(),
            source: e.into(),
        }
        .into()
    })
}

/// Checks a `model` column, when the result has one, against the caller's model: on a cluster
/// every executor must have scored with the same artifact, or the answer is refused.
fn check_model(batch: &RecordBatch, tag: &str) -> Result<(), SqlError> {
    let Some(col) = batch.column_by_name("model") else {
        return Ok(());
    };
    let col = datafusion::arrow::compute::cast(col, &datafusion::arrow::datatypes::DataType::Utf8)?;
    if let Some(s) = col
        .as_any()
        .downcast_ref::<datafusion::arrow::array::StringArray>()
    {
        for v in s.iter().flatten() {
            if !v.is_empty() && v != tag {
                return Err(SqlError::Model(format!(
                    "a row was scored with model {v}, not {tag} (this command's --model): \
                     every node must load the same artifact; result refused"
                )));
            }
        }
    }
    Ok(())
}

/// Streams a result to CSV (header = column names); returns the rows written.
pub async fn write_csv(
    mut stream: SendableRecordBatchStream,
    out: &Path,
    model_tag: Option<&str>,
) -> Result<u64, SqlError> {
    use futures::StreamExt;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| SqlError::Write {
            file: dir.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    let werr = |e: &dyn std::fmt::Display| SqlError::Write {
        file: out.display().to_string(),
        reason: e.to_string(),
    };
    // written beside the output and renamed at the end: a failed query leaves no partial file
    let part = partial_path(out);
    let mut w = csv::Writer::from_path(&part).map_err(|e| werr(&e))?;
    let header: Vec<String> = stream
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    w.write_record(&header).map_err(|e| werr(&e))?;
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = match batch.map_err(SqlError::from).and_then(|b| {
            if let Some(tag) = model_tag {
                check_model(&b, tag)?;
            }
            Ok(b)
        }) {
            Ok(b) => b,
            Err(e) => {
                drop(w);
                let _ = std::fs::remove_file(&part);
                return Err(e);
            }
        };
        rows += write_batch(&mut w, &batch).map_err(|e| werr(&e))?;
    }
    w.flush().map_err(|e| werr(&e))?;
    drop(w);
    std::fs::rename(&part, out).map_err(|e| werr(&e))?;
    Ok(rows)
}

/// `<out>.partial`: where a result is written before it is complete.
fn partial_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// Writes a batch's rows as CSV records (values as Arrow displays them; nulls empty).
pub fn write_batch<W: std::io::Write>(
    w: &mut csv::Writer<W>,
    batch: &RecordBatch,
) -> Result<u64, Box<dyn std::error::Error>> {
    let opts = FormatOptions::default().with_null("");
    let fmts: Vec<ArrayFormatter> = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
        .collect::<Result<_, _>>()?;
    let mut rec = Vec::with_capacity(fmts.len());
    for r in 0..batch.num_rows() {
        rec.clear();
        for f in &fmts {
            rec.push(f.value(r).to_string());
        }
        w.write_record(&rec)?;
    }
    Ok(batch.num_rows() as u64)
}

/// Prints a result as a table on stdout; returns its rows.
async fn print_table(
    mut stream: SendableRecordBatchStream,
    model_tag: Option<&str>,
) -> Result<u64, SqlError> {
    use futures::StreamExt;
    let mut batches = Vec::new();
    while let Some(b) = stream.next().await {
        let b = b?;
        if let Some(tag) = model_tag {
            check_model(&b, tag)?;
        }
        batches.push(b);
    }
    let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
    let table = datafusion::arrow::util::pretty::pretty_format_batches(&batches)?;
    println!("{table}");
    Ok(rows)
}

/// A `threatrank hunt run` run.
#[derive(Debug, Clone)]
pub struct HuntRun {
    /// hunt name
    pub name: String,
    /// GUIDE CSV or Parquet file/folder
    pub input: PathBuf,
    /// model artifact that scores the hits
    pub model: PathBuf,
    /// folder of hunt files
    pub hunts: PathBuf,
    /// CSV to write (else a table on stdout)
    pub output: Option<PathBuf>,
    /// where to write the run's figures
    pub stats_json: Option<PathBuf>,
    /// memory the plan may hold
    pub memory: MemoryLimit,
}

/// `threatrank hunt run NAME`.
pub fn hunt(run: &HuntRun, kn: Knowledge) -> Result<(), PipelineError> {
    let HuntRun {
        name,
        input,
        model,
        hunts: dir,
        output,
        stats_json,
        memory,
    } = run;
    let started = std::time::Instant::now();
    let hunts = super::hunts::load_dir(dir)?;
    let Some(h) = hunts.iter().find(|h| &h.name == name) else {
        let names: Vec<&str> = hunts.iter().map(|h| h.name.as_str()).collect();
        return Err(SqlError::Hunt {
            file: dir.display().to_string(),
            reason: format!("no hunt named {name:?} (there are: {})", names.join(", ")),
        }
        .into());
    };
    let engine = Arc::new(Engine::load(model, kn)?);
    let rt = runtime()?;
    let res = rt
        .block_on(async {
            let ctx = local_session(engine.clone(), input, None, *memory).await?;
            super::hunts::run(&ctx, &engine, h).await
        })
        .map_err(|e| e.with_memory_limit(*memory))?;
    let rows: usize = res.queue.iter().map(RecordBatch::num_rows).sum();
    match output {
        Some(out) => {
            let werr = |e: &dyn std::fmt::Display| SqlError::Write {
                file: out.display().to_string(),
                reason: e.to_string(),
            };
            let mut w = csv::Writer::from_path(out).map_err(|e| werr(&e))?;
            match res.queue.first() {
                Some(b) => {
                    let header: Vec<String> = b
                        .schema()
                        .fields()
                        .iter()
                        .map(|f| f.name().clone())
                        .collect();
                    w.write_record(&header).map_err(|e| werr(&e))?;
                }
                None => w
                    .write_record([
                        "hunt",
                        "version",
                        "tenant",
                        "incident",
                        "priority",
                        "predicted_grade",
                        "p_true_positive",
                        "certainty",
                        "alerts",
                        "hit_reason",
                        "model",
                    ])
                    .map_err(|e| werr(&e))?,
            }
            for b in &res.queue {
                check_model(b, engine.model_tag())?;
                write_batch(&mut w, b).map_err(|e| werr(&e.as_ref()))?;
            }
            w.flush().map_err(|e| werr(&e))?;
        }
        None => {
            let table = datafusion::arrow::util::pretty::pretty_format_batches(&res.queue)
                .map_err(SqlError::from)?;
            println!("{table}");
        }
    }
    eprintln!(
        "hunt {} v{}: {} incident(s) matched, {} scored; find {:.2} s, score {:.2} s",
        h.name, h.version, res.hits, rows, res.find_seconds, res.score_seconds
    );
    if let Some(p) = stats_json {
        let stats = serde_json::json!({
            "hunt": h.name,
            "version": h.version,
            "seconds": started.elapsed().as_secs_f64(),
            "find_seconds": res.find_seconds,
            "score_seconds": res.score_seconds,
            "hits": res.hits,
            "peak_rss_bytes": crate::stream::peak_rss_bytes(),
        });
        write_stats(p, &stats)?;
    }
    Ok(())
}
