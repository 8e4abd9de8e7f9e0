//! `threatrank_features`: the aggregate that turns an incident's evidence rows into its
//! feature row.
//!
//! Group state is the incident's raw rows, each encoded as its [`super::input_columns`]
//! fields (`u32` little-endian length, `u32::MAX` for null, then the bytes). The state travels
//! between aggregation phases as one `Binary` value per group (`u32` row count, then the
//! rows), so DataFusion may pre-aggregate, skip pre-aggregation (`convert_to_state`), spill or
//! ship partial states to other Ballista executors: the final phase always sees every row of
//! an incident. `evaluate` parses the rows with the GUIDE parser, groups them into incidents
//! and extracts features for all emitted groups at once (rayon inside `transform`).

use super::{features_type, Engine, FEATURES_FN};
use crate::correlate::group_incidents;
use crate::domain::Evidence;
use datafusion::arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryBuilder, BooleanArray, FixedSizeListArray, Float32Array,
    StringArray, StringBuilder, StructArray, UInt64Builder,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{exec_err, plan_err, Result as DfResult, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};
use rayon::prelude::*;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

const NULL_FIELD: u32 = u32::MAX;

/// Groups featurized at once by `evaluate` (enough for rayon to keep every core busy).
const EVALUATE_CHUNK: usize = 16_384;

/// The aggregate function `threatrank_features(<input columns>)`.
#[derive(Debug)]
pub struct FeaturesUdaf {
    engine: Arc<Engine>,
    signature: Signature,
}

impl FeaturesUdaf {
    /// The function over an engine.
    pub fn new(engine: Arc<Engine>) -> FeaturesUdaf {
        FeaturesUdaf {
            engine,
            signature: Signature::any(super::input_columns().len(), Volatility::Immutable),
        }
    }
}

impl PartialEq for FeaturesUdaf {
    fn eq(&self, other: &Self) -> bool {
        self.engine.sha256 == other.engine.sha256
    }
}
impl Eq for FeaturesUdaf {}
impl Hash for FeaturesUdaf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        FEATURES_FN.hash(state);
        self.engine.sha256.hash(state);
    }
}

impl AggregateUDFImpl for FeaturesUdaf {
    fn name(&self) -> &str {
        FEATURES_FN
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        let want = super::input_columns();
        if arg_types.len() != want.len() {
            return plan_err!(
                "{FEATURES_FN} takes the {} GUIDE columns {} (NULL for absent ones), got {}",
                want.len(),
                want.join(", "),
                arg_types.len()
            );
        }
        Ok(features_type(self.engine.n_features()))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> DfResult<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format!("{}[rows]", args.name),
            DataType::Binary,
            true,
        ))])
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        Ok(Box::new(One {
            groups: Groups::new(self.engine.clone()),
        }))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        _args: AccumulatorArgs,
    ) -> DfResult<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(Groups::new(self.engine.clone())))
    }
}

/// Raw rows of every group.
#[derive(Debug)]
struct Groups {
    engine: Arc<Engine>,
    /// encoded rows, concatenated
    rows: Vec<Vec<u8>>,
    /// rows per group
    counts: Vec<u32>,
    /// bytes allocated for the rows (capacities, not lengths: growth doubles a buffer), for
    /// DataFusion's memory accounting, which decides when the aggregation spills
    bytes: usize,
}

impl Groups {
    fn new(engine: Arc<Engine>) -> Groups {
        Groups {
            engine,
            rows: Vec::new(),
            counts: Vec::new(),
            bytes: 0,
        }
    }

    fn resize(&mut self, n: usize) {
        if self.rows.len() < n {
            self.rows.resize_with(n, Vec::new);
            self.counts.resize(n, 0);
        }
    }

    /// Appends row `r` of `cols` to group `g`.
    fn push_row(&mut self, g: usize, cols: &[StringArray], r: usize) {
        let buf = &mut self.rows[g];
        let before = buf.capacity();
        encode_row(buf, cols, r);
        self.bytes += buf.capacity() - before;
        self.counts[g] += 1;
    }

    /// Appends a state blob (row count + rows) to group `g`.
    fn merge_blob(&mut self, g: usize, blob: &[u8]) -> DfResult<()> {
        let Some((n, rows)) = blob.split_first_chunk::<4>() else {
            return exec_err!("{FEATURES_FN}: truncated state");
        };
        let buf = &mut self.rows[g];
        let before = buf.capacity();
        buf.extend_from_slice(rows);
        self.bytes += buf.capacity() - before;
        self.counts[g] += u32::from_le_bytes(*n);
        Ok(())
    }

    fn take(&mut self, emit_to: EmitTo) -> (Vec<Vec<u8>>, Vec<u32>) {
        let rows = emit_to.take_needed(&mut self.rows);
        let counts = emit_to.take_needed(&mut self.counts);
        self.bytes = self.rows.iter().map(Vec::capacity).sum();
        (rows, counts)
    }
}

/// Every input column as text (the Parquet reader's conversion: any type Arrow casts to Utf8,
/// timestamps as RFC 3339 UTC).
fn text_columns(values: &[ArrayRef]) -> DfResult<Vec<StringArray>> {
    values
        .iter()
        .map(|v| match crate::ingest::as_text(v) {
            Ok(s) => Ok(s),
            Err(e) => exec_err!(
                "{FEATURES_FN}: column of type {} as text: {e}",
                v.data_type()
            ),
        })
        .collect()
}

fn encode_row(buf: &mut Vec<u8>, cols: &[StringArray], r: usize) {
    for c in cols {
        if c.is_null(r) {
            buf.extend_from_slice(&NULL_FIELD.to_le_bytes());
        } else {
            let v = c.value(r).as_bytes();
            buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
            buf.extend_from_slice(v);
        }
    }
}

/// Decodes `n` rows of `width` fields into CSV-like records (null → empty field).
fn decode_rows(bytes: &[u8], n: u32, width: usize) -> DfResult<Vec<csv::ByteRecord>> {
    let mut out = Vec::with_capacity(n as usize);
    let mut at = 0usize;
    for _ in 0..n {
        let mut rec = csv::ByteRecord::new();
        for _ in 0..width {
            let Some(len) = bytes
                .get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes)
            else {
                return exec_err!("{FEATURES_FN}: truncated state");
            };
            at += 4;
            if len == NULL_FIELD {
                rec.push_field(b"");
            } else {
                let end = at + len as usize;
                let Some(f) = bytes.get(at..end) else {
                    return exec_err!("{FEATURES_FN}: truncated state");
                };
                rec.push_field(f);
                at = end;
            }
        }
        out.push(rec);
    }
    Ok(out)
}

/// What one group's rows parse to.
struct Parsed {
    evidence: Vec<Evidence>,
    rejected: u64,
    rejection: Option<String>,
}

/// Features of the groups' rows: the `threatrank_features` struct array.
fn features_of(engine: &Engine, rows: Vec<Vec<u8>>, counts: Vec<u32>) -> DfResult<ArrayRef> {
    let width = super::input_columns().len();
    let parser = &engine.parser;
    let parsed: Vec<Parsed> = rows
        .par_iter()
        .zip(counts.par_iter())
        .map(|(bytes, &n)| -> DfResult<Parsed> {
            let recs = decode_rows(bytes, n, width)?;
            let mut p = Parsed {
                evidence: Vec::with_capacity(recs.len()),
                rejected: 0,
                rejection: None,
            };
            for (i, rec) in recs.iter().enumerate() {
                match parser.parse(rec, i as u64 + 1, i as u64) {
                    Ok(e) => p.evidence.push(e),
                    Err(r) => {
                        p.rejected += 1;
                        if p.rejection.is_none() {
                            p.rejection = Some(match &r.column {
                                Some(c) => format!("column {c}: {}", r.reason),
                                None => r.reason.clone(),
                            });
                        }
                    }
                }
            }
            Ok(p)
        })
        .collect::<DfResult<_>>()?;
    drop(rows);
    // all groups' evidence in one list: one correlation and one batched transform
    let mut evidence = Vec::with_capacity(parsed.iter().map(|p| p.evidence.len()).sum());
    let mut first_row: Vec<Option<usize>> = Vec::with_capacity(parsed.len());
    let mut meta = Vec::with_capacity(parsed.len());
    for p in parsed {
        first_row.push((!p.evidence.is_empty()).then_some(evidence.len()));
        meta.push((p.evidence.len() as u64, p.rejected, p.rejection));
        for mut e in p.evidence {
            e.record = evidence.len() as u64;
            evidence.push(e);
        }
    }
    let corr = group_incidents(&evidence);
    let which: Vec<usize> = first_row
        .iter()
        .flatten()
        .map(|&r| corr.incident_of[r] as usize)
        .collect();
    let x = engine
        .artifact
        .features
        .transform(&evidence, &corr, &which, &engine.knowledge);
    engine
        .featurized
        .fetch_add(which.len() as u64, std::sync::atomic::Ordering::Relaxed);
    let n = engine.n_features();
    let g = first_row.len();
    let mut tenant = UInt64Builder::with_capacity(g);
    let mut incident = UInt64Builder::with_capacity(g);
    let mut alerts = UInt64Builder::with_capacity(g);
    let mut rows_b = UInt64Builder::with_capacity(g);
    let mut rejected = UInt64Builder::with_capacity(g);
    let mut rejection = StringBuilder::new();
    let mut values: Vec<f32> = Vec::with_capacity(g * n);
    let mut valid = Vec::with_capacity(g);
    let mut k = 0usize;
    for (first, (accepted, rej, why)) in first_row.iter().zip(meta) {
        match first {
            Some(r) => {
                let inc = &corr.incidents[corr.incident_of[*r] as usize];
                tenant.append_value(inc.key.tenant.0);
                incident.append_value(inc.key.incident.0);
                alerts.append_value(inc.alerts.len() as u64);
                values.extend_from_slice(x.row(k));
                k += 1;
                valid.push(true);
            }
            None => {
                tenant.append_null();
                incident.append_null();
                alerts.append_value(0);
                values.extend(std::iter::repeat_n(0f32, n));
                valid.push(false);
            }
        }
        rows_b.append_value(accepted);
        rejected.append_value(rej);
        rejection.append_option(why);
    }
    let tenants = corr.tenants_of(&which);
    let mut k2 = 0usize;
    let at: Vec<Option<usize>> = first_row
        .iter()
        .map(|f| {
            f.map(|_| {
                k2 += 1;
                k2 - 1
            })
        })
        .collect();
    let (scores, _) = super::score_arrays(engine, x, &tenants, &at)?;
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    let feats = FixedSizeListArray::try_new(
        item,
        n as i32,
        Arc::new(Float32Array::from(values)),
        Some(NullBuffer::from(valid)),
    )?;
    let DataType::Struct(fields) = features_type(n) else {
        return exec_err!("{FEATURES_FN}: return type is not a struct");
    };
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(tenant.finish()),
        Arc::new(incident.finish()),
        Arc::new(alerts.finish()),
        Arc::new(rows_b.finish()),
        Arc::new(rejected.finish()),
        Arc::new(rejection.finish()),
        Arc::new(feats),
    ];
    columns.extend(scores);
    Ok(Arc::new(StructArray::try_new(fields, columns, None)?))
}

/// State blobs of the groups.
fn state_of(rows: Vec<Vec<u8>>, counts: Vec<u32>) -> ArrayRef {
    let mut b = BinaryBuilder::with_capacity(rows.len(), rows.iter().map(|r| r.len() + 4).sum());
    let mut blob = Vec::new();
    for (r, n) in rows.into_iter().zip(counts) {
        blob.clear();
        blob.extend_from_slice(&n.to_le_bytes());
        blob.extend_from_slice(&r);
        b.append_value(&blob);
    }
    Arc::new(b.finish())
}

impl GroupsAccumulator for Groups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> DfResult<()> {
        self.resize(total_num_groups);
        let cols = text_columns(values)?;
        for (r, &g) in group_indices.iter().enumerate() {
            if opt_filter.is_some_and(|f| !f.is_valid(r) || !f.value(r)) {
                continue;
            }
            self.push_row(g, &cols, r);
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> DfResult<ArrayRef> {
        let (rows, counts) = self.take(emit_to);
        if rows.len() <= EVALUATE_CHUNK {
            return features_of(&self.engine, rows, counts);
        }
        // Parsed evidence and feature extraction take several times the raw rows' bytes and
        // DataFusion does not see them: featurize a chunk of groups at a time, freeing each
        // chunk's rows as it goes, so the peak is the compact output, not the whole input
        // parsed at once.
        let mut parts = Vec::with_capacity(rows.len().div_ceil(EVALUATE_CHUNK));
        let mut rows = rows.into_iter();
        let mut counts = counts.into_iter();
        loop {
            let r: Vec<Vec<u8>> = rows.by_ref().take(EVALUATE_CHUNK).collect();
            if r.is_empty() {
                break;
            }
            let c: Vec<u32> = counts.by_ref().take(r.len()).collect();
            parts.push(features_of(&self.engine, r, c)?);
        }
        let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
        Ok(datafusion::arrow::compute::concat(&refs)?)
    }

    fn state(&mut self, emit_to: EmitTo) -> DfResult<Vec<ArrayRef>> {
        let (rows, counts) = self.take(emit_to);
        Ok(vec![state_of(rows, counts)])
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> DfResult<()> {
        self.resize(total_num_groups);
        let Some(blobs) = values
            .first()
            .and_then(|v| v.as_any().downcast_ref::<BinaryArray>())
        else {
            return exec_err!("{FEATURES_FN}: state is not binary");
        };
        for (r, &g) in group_indices.iter().enumerate() {
            if !blobs.is_null(r) {
                self.merge_blob(g, blobs.value(r))?;
            }
        }
        Ok(())
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> DfResult<Vec<ArrayRef>> {
        let cols = text_columns(values)?;
        let n = values.first().map_or(0, |v| v.len());
        let mut b = BinaryBuilder::with_capacity(n, n * 64);
        let mut blob = Vec::new();
        for r in 0..n {
            blob.clear();
            let keep = opt_filter.is_none_or(|f| f.is_valid(r) && f.value(r));
            blob.extend_from_slice(&u32::from(keep).to_le_bytes());
            if keep {
                encode_row(&mut blob, &cols, r);
            }
            b.append_value(&blob);
        }
        Ok(vec![Arc::new(b.finish())])
    }

    fn size(&self) -> usize {
        self.bytes
            + self.rows.capacity() * std::mem::size_of::<Vec<u8>>()
            + self.counts.capacity() * 4
    }
}

/// The one-group accumulator (DataFusion uses it where grouped accumulators do not apply,
/// e.g. an aggregate without GROUP BY): the same state and the same evaluation.
#[derive(Debug)]
struct One {
    groups: Groups,
}

impl Accumulator for One {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        let n = values.first().map_or(0, |v| v.len());
        self.groups.update_batch(values, &vec![0; n], None, 1)
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        self.groups.resize(1);
        let a = self.groups.evaluate(EmitTo::All)?;
        ScalarValue::try_from_array(&a, 0)
    }

    fn size(&self) -> usize {
        self.groups.size()
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        self.groups.resize(1);
        let a = self.groups.state(EmitTo::All)?;
        Ok(vec![ScalarValue::try_from_array(&a[0], 0)?])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        let n = states.first().map_or(0, |v| v.len());
        self.groups.merge_batch(states, &vec![0; n], 1)
    }
}
