//! Feature matrices and their schema: the only data type that crosses from `features` into
//! `models` and `eval`.
//!
//! A [`FeatureMatrix`] is a dense, row-major, contiguous `f32` buffer (one row per candidate
//! threat). A [`FeatureSchema`] names its columns, groups them in families (for explanations
//! and importance by family) and carries a hash over version + names, so that a model trained on
//! one schema refuses to score a matrix built with another.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Errors raised when building a matrix.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MatrixError {
    /// The data length is not `rows * cols`.
    #[error("feature matrix shape mismatch: {rows} rows x {cols} columns needs {expected} values, got {got}")]
    Shape {
        /// rows asked for
        rows: usize,
        /// columns asked for
        cols: usize,
        /// rows * cols
        expected: usize,
        /// values given
        got: usize,
    },
    /// A pushed row has the wrong width.
    #[error("row has {got} values, matrix has {expected} columns")]
    RowWidth {
        /// matrix width
        expected: usize,
        /// row width
        got: usize,
    },
}

/// Dense row-major `f32` matrix.
///
/// ```
/// use threatrank::matrix::FeatureMatrix;
/// let m = FeatureMatrix::from_vec(2, 3, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
/// assert_eq!(m.row(1), &[4.0, 5.0, 6.0]);
/// assert_eq!(m.get(0, 2), 3.0);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureMatrix {
    n_rows: usize,
    n_cols: usize,
    data: Vec<f32>,
}

impl FeatureMatrix {
    /// An empty matrix with `n_cols` columns, ready for [`FeatureMatrix::push_row`].
    pub fn with_columns(n_cols: usize) -> Self {
        Self {
            n_rows: 0,
            n_cols,
            data: Vec::new(),
        }
    }

    /// A matrix of `n_rows` × `n_cols` zeros (rows to be written with
    /// [`FeatureMatrix::row_mut`] or [`FeatureMatrix::as_mut_slice`]).
    pub fn zeros(n_rows: usize, n_cols: usize) -> Self {
        Self {
            n_rows,
            n_cols,
            data: vec![0.0; n_rows * n_cols],
        }
    }

    /// Wraps a row-major buffer; errors when `data.len() != rows * cols`.
    pub fn from_vec(n_rows: usize, n_cols: usize, data: Vec<f32>) -> Result<Self, MatrixError> {
        let expected = n_rows * n_cols;
        if data.len() != expected {
            return Err(MatrixError::Shape {
                rows: n_rows,
                cols: n_cols,
                expected,
                got: data.len(),
            });
        }
        Ok(Self {
            n_rows,
            n_cols,
            data,
        })
    }

    /// Appends one row.
    pub fn push_row(&mut self, row: &[f32]) -> Result<(), MatrixError> {
        if row.len() != self.n_cols {
            return Err(MatrixError::RowWidth {
                expected: self.n_cols,
                got: row.len(),
            });
        }
        self.data.extend_from_slice(row);
        self.n_rows += 1;
        Ok(())
    }

    /// Appends all rows of `other` (same width, else [`MatrixError::RowWidth`]).
    pub fn extend(&mut self, other: &FeatureMatrix) -> Result<(), MatrixError> {
        if other.n_cols != self.n_cols {
            return Err(MatrixError::RowWidth {
                expected: self.n_cols,
                got: other.n_cols,
            });
        }
        self.data.extend_from_slice(&other.data);
        self.n_rows += other.n_rows;
        Ok(())
    }

    /// The row-major buffer, mutable (its length stays `n_rows * n_cols`).
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    /// Number of columns.
    pub fn n_cols(&self) -> usize {
        self.n_cols
    }

    /// Row `i` as a slice. Panics when `i >= n_rows` (an indexing bug, not bad input).
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.n_cols..(i + 1) * self.n_cols]
    }

    /// Mutable row `i`.
    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.data[i * self.n_cols..(i + 1) * self.n_cols]
    }

    /// Value at (`row`, `col`).
    pub fn get(&self, row: usize, col: usize) -> f32 {
        self.data[row * self.n_cols + col]
    }

    /// The whole row-major buffer.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// Iterates over rows.
    pub fn rows(&self) -> impl ExactSizeIterator<Item = &[f32]> + '_ {
        // chunks_exact on an empty-width matrix would panic; a zero-column matrix has no data.
        let width = self.n_cols.max(1);
        let n = if self.n_cols == 0 { 0 } else { self.n_rows };
        self.data.chunks_exact(width).take(n)
    }

    /// A new matrix holding the given rows, in the given order.
    pub fn select_rows(&self, idx: &[usize]) -> FeatureMatrix {
        let mut data = Vec::with_capacity(idx.len() * self.n_cols);
        for &i in idx {
            data.extend_from_slice(self.row(i));
        }
        FeatureMatrix {
            n_rows: idx.len(),
            n_cols: self.n_cols,
            data,
        }
    }
}

/// Names, families and version of a feature matrix's columns, with a content hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureSchema {
    version: u32,
    names: Vec<String>,
    families: Vec<String>,
    hash: String,
}

impl FeatureSchema {
    /// Builds a schema; `columns` are (name, family) pairs in column order.
    pub fn new(version: u32, columns: Vec<(String, String)>) -> Self {
        let (names, families): (Vec<_>, Vec<_>) = columns.into_iter().unzip();
        let mut h = Sha256::new();
        h.update(version.to_le_bytes());
        for (n, f) in names.iter().zip(&families) {
            h.update(n.as_bytes());
            h.update([0u8]);
            h.update(f.as_bytes());
            h.update([0xffu8]);
        }
        let hash = hex(&h.finalize()[..8]);
        Self {
            version,
            names,
            families,
            hash,
        }
    }

    /// Schema version (bumped when extractors change meaning).
    pub fn version(&self) -> u32 {
        self.version
    }
    /// Column names.
    pub fn names(&self) -> &[String] {
        &self.names
    }
    /// Column families (one per column).
    pub fn families(&self) -> &[String] {
        &self.families
    }
    /// Number of columns.
    pub fn len(&self) -> usize {
        self.names.len()
    }
    /// True when the schema has no column.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
    /// 16 hex digits of SHA-256 over version, names and families.
    pub fn hash(&self) -> &str {
        &self.hash
    }
    /// The hash recomputed from version, names and families (differs from [`FeatureSchema::hash`]
    /// only when a stored schema was edited).
    pub fn computed_hash(&self) -> String {
        let columns = self
            .names
            .iter()
            .cloned()
            .zip(self.families.iter().cloned())
            .collect();
        Self::new(self.version, columns).hash
    }

    /// Sums per-column values (one per column, e.g. one row's additive contributions) by
    /// family, families in the order of their first column. Extra or missing values are
    /// ignored (the zip stops at the shorter).
    ///
    /// ```
    /// use threatrank::matrix::FeatureSchema;
    /// let cols = [("a", "x"), ("b", "y"), ("c", "x")];
    /// let s = FeatureSchema::new(1, cols.iter().map(|(n, f)| (n.to_string(), f.to_string())).collect());
    /// assert_eq!(s.family_sums(&[1.0, 2.0, 0.5]), vec![("x".to_string(), 1.5), ("y".to_string(), 2.0)]);
    /// ```
    pub fn family_sums(&self, values: &[f32]) -> Vec<(String, f32)> {
        let mut out: Vec<(String, f32)> = Vec::new();
        for (&v, family) in values.iter().zip(&self.families) {
            match out.iter_mut().find(|(f, _)| f == family) {
                Some((_, s)) => *s += v,
                None => out.push((family.clone(), v)),
            }
        }
        out
    }

    /// Index of a column by name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    hex_into(bytes, &mut out).to_string()
}

/// [`hex`] written into `out` (the first `2 × bytes.len()` bytes; no allocation), returned
/// as text. Bytes beyond `out`'s room are not written.
pub fn hex_into<'a>(bytes: &[u8], out: &'a mut [u8]) -> &'a str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let n = bytes.len().min(out.len() / 2);
    for (pair, b) in out.chunks_exact_mut(2).zip(&bytes[..n]) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 15)];
    }
    // hex digits are ASCII
    std::str::from_utf8(&out[..2 * n]).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_reference_values_and_into_a_buffer() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(hex(&[]), "");
        let mut buf = [0u8; 32];
        let bytes: Vec<u8> = (0..16).map(|i| i * 17).collect();
        assert_eq!(hex_into(&bytes, &mut buf), hex(&bytes));
        // room for 2 bytes only: the first 2 are written
        let mut small = [0u8; 5];
        assert_eq!(hex_into(&[0xab, 0xcd, 0xef], &mut small), "abcd");
    }

    #[test]
    fn shape_is_checked() {
        assert!(matches!(
            FeatureMatrix::from_vec(2, 2, vec![0.0; 3]),
            Err(MatrixError::Shape {
                expected: 4,
                got: 3,
                ..
            })
        ));
        let mut m = FeatureMatrix::with_columns(2);
        assert!(m.push_row(&[1.0]).is_err());
        m.push_row(&[1.0, 2.0]).unwrap();
        assert_eq!(m.n_rows(), 1);
        assert_eq!(m.rows().count(), 1);
    }

    #[test]
    fn schema_hash_changes_with_names_and_version() {
        let a = FeatureSchema::new(1, vec![("a".into(), "f".into())]);
        let b = FeatureSchema::new(1, vec![("b".into(), "f".into())]);
        let c = FeatureSchema::new(2, vec![("a".into(), "f".into())]);
        assert_ne!(a.hash(), b.hash());
        assert_ne!(a.hash(), c.hash());
        assert_eq!(a.hash().len(), 16);
        assert_eq!(a, FeatureSchema::new(1, vec![("a".into(), "f".into())]));
    }
}
