//! Weight matrices in any supported format and their product with f32
//! activations.
//!
//! Two paths:
//! - the dot path: activations are quantized to 8-bit blocks once (for
//!   quantized weights), then every weight row is dotted with every
//!   activation row by the SIMD kernel, rows split across threads. The
//!   weights stream from memory once per call. On AVX-512 VNNI CPUs, Q4_0,
//!   Q4_1 and Q8_0 matrices are stored interleaved 16 rows at a time
//!   (`quant::packed`) for a kernel that needs no horizontal sums and
//!   writes outputs in place.
//! - the GEMM path: tiles of weight rows are dequantized to f32 and
//!   multiplied with a cache-blocked f32 GEMM, tiles split across threads.
//!
//! Quantized weights always take the dot path. Each output element is then
//! computed by the same sequence of operations whatever the other rows of
//! the batch are, so a sequence's logits do not depend on what it is
//! batched with (greedy outputs are batch-invariant, bit for bit). Float
//! weights take the GEMM path above [`GEMV_MAX_ROWS`] rows, trading that
//! invariance for prefill speed.

use crate::buffer::AlignedBytes;
use crate::quant::act::{ActFormat, QuantizedActs};
use crate::quant::dequant::dequantize;
use crate::quant::dot::{dot_fn, DotFn};
#[cfg(target_arch = "x86_64")]
use crate::quant::gemv_avx2::{ActRow, GemvFn};
use crate::quant::packed::{self, ActView, PackedFormat, PackedShape};
use crate::quant::WeightType;
use crate::{shape_err, Error, Result};
use std::borrow::Cow;
use std::cell::RefCell;

/// Up to this many activation rows, float weights take the dot path.
pub const GEMV_MAX_ROWS: usize = 8;

/// Weight rows dequantized per GEMM tile.
const TILE_ROWS: usize = 64;

/// A `rows x cols` weight matrix stored row-major in `wtype` blocks.
#[derive(Clone)]
pub struct QMatrix {
    wtype: WeightType,
    rows: usize,
    cols: usize,
    /// Bytes of one row of GGML blocks.
    row_bytes: usize,
    /// Row-major GGML blocks, or the interleaved layout when `packed` is set.
    data: AlignedBytes,
    packed: Option<PackedShape>,
    dot: DotFn,
    /// The tiled decode kernel, where this CPU and format have one.
    #[cfg(target_arch = "x86_64")]
    tiled: Option<GemvFn>,
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QMatrix({} x {}, {})", self.rows, self.cols, self.wtype)
    }
}

impl QMatrix {
    /// Wraps raw row-major block data (e.g. a GGUF tensor's bytes).
    pub fn from_bytes(wtype: WeightType, rows: usize, cols: usize, bytes: &[u8]) -> Result<Self> {
        let row_bytes = wtype.row_bytes(cols)?;
        if bytes.len() != rows * row_bytes {
            return Err(Error::Invalid(format!(
                "{rows} x {cols} {wtype} matrix needs {} bytes, got {}",
                rows * row_bytes,
                bytes.len()
            )));
        }
        let packed = packed_shape(wtype, rows, cols);
        let data = match packed {
            Some(shape) => packed::pack(shape, bytes),
            None => AlignedBytes::from_slice(bytes),
        };
        Ok(QMatrix {
            wtype,
            rows,
            cols,
            row_bytes,
            data,
            packed,
            dot: dot_fn(wtype),
            #[cfg(target_arch = "x86_64")]
            tiled: tiled_kernel(wtype),
        })
    }

    /// An f32 matrix from row-major values.
    pub fn from_f32(rows: usize, cols: usize, values: &[f32]) -> Result<Self> {
        if values.len() != rows * cols {
            return Err(shape_err(
                "QMatrix::from_f32",
                format!(
                    "{rows} x {cols} needs {} values, got {}",
                    rows * cols,
                    values.len()
                ),
            ));
        }
        let mut data = AlignedBytes::zeroed(values.len() * 4);
        for (d, v) in data.as_mut_slice().chunks_exact_mut(4).zip(values) {
            d.copy_from_slice(&v.to_le_bytes());
        }
        Ok(QMatrix {
            wtype: WeightType::F32,
            rows,
            cols,
            row_bytes: cols * 4,
            data,
            packed: None,
            dot: dot_fn(WeightType::F32),
            #[cfg(target_arch = "x86_64")]
            tiled: None,
        })
    }

    /// Stacks matrices with the same type and column count vertically (used
    /// to fuse Q/K/V and gate/up projections into one product).
    pub fn concat_rows(parts: &[&QMatrix]) -> Result<Self> {
        let first = parts
            .first()
            .ok_or_else(|| Error::Invalid("concat_rows of nothing".into()))?;
        if let Some(bad) = parts
            .iter()
            .find(|p| p.wtype != first.wtype || p.cols != first.cols)
        {
            return Err(shape_err(
                "concat_rows",
                format!("{bad:?} does not stack with {first:?}"),
            ));
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        let mut bytes = Vec::with_capacity(rows * first.row_bytes);
        for p in parts {
            bytes.extend_from_slice(&p.raw_rows(0, p.rows));
        }
        QMatrix::from_bytes(first.wtype, rows, first.cols, &bytes)
    }

    pub fn wtype(&self) -> WeightType {
        self.wtype
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of storage.
    pub fn storage_bytes(&self) -> usize {
        self.data.len()
    }

    /// The GGML blocks of row `r` (rebuilt from the interleaved layout when
    /// the matrix is stored that way).
    pub fn row(&self, r: usize) -> Cow<'_, [u8]> {
        self.raw_rows(r, 1)
    }

    /// Whether the matrix is stored interleaved for the AVX-512 kernel.
    pub fn is_packed(&self) -> bool {
        self.packed.is_some()
    }

    /// Row-major GGML blocks of rows `r0..r0 + n`.
    fn raw_rows(&self, r0: usize, n: usize) -> Cow<'_, [u8]> {
        match self.packed {
            Some(shape) => Cow::Owned(packed::unpack_rows(shape, self.data.as_slice(), r0, n)),
            None => {
                Cow::Borrowed(&self.data.as_slice()[r0 * self.row_bytes..(r0 + n) * self.row_bytes])
            }
        }
    }

    /// Dequantizes row `r` into `out` (`cols` values).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<()> {
        if r >= self.rows || out.len() != self.cols {
            return Err(shape_err(
                "dequantize_row",
                format!("row {r} of {self:?} into {} values", out.len()),
            ));
        }
        dequantize(self.wtype, &self.row(r), out);
        Ok(())
    }

    /// All values as f32, row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        dequantize(self.wtype, &self.raw_rows(0, self.rows), &mut out);
        out
    }

    /// `out[m, rows] = x[m, cols] * self^T`.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
        if x.len() != m * self.cols || out.len() != m * self.rows {
            return Err(shape_err(
                "matmul",
                format!(
                    "x has {} values and out {} for m = {m} against {self:?}",
                    x.len(),
                    out.len()
                ),
            ));
        }
        if m == 0 {
            return Ok(());
        }
        if m <= GEMV_MAX_ROWS || self.is_batch_invariant() {
            self.matmul_dot(x, m, out);
        } else {
            self.matmul_gemm(x, m, out);
        }
        Ok(())
    }

    /// Whether every row's product is independent of the batch around it
    /// (true for formats multiplied through integer dot products).
    pub fn is_batch_invariant(&self) -> bool {
        ActFormat::for_weight(self.wtype) != ActFormat::F32
    }

    /// The quantized-dot path (also used directly by tests and benchmarks).
    pub fn matmul_dot(&self, x: &[f32], m: usize, out: &mut [f32]) {
        thread_local! {
            static ACTS: RefCell<QuantizedActs> = RefCell::new(QuantizedActs::default());
        }
        ACTS.with(|acts| {
            let mut acts = acts.borrow_mut();
            acts.quantize(ActFormat::for_weight(self.wtype), x, m, self.cols);
            let acts = &*acts;
            #[cfg(target_arch = "x86_64")]
            if let Some(shape) = self.packed {
                self.matmul_packed(shape, acts, m, out);
                return;
            }
            let n = self.rows;
            let per_task = rows_per_task(n);
            // Row-major by weight row: out_t[r * m + t].
            let mut transposed = Vec::new();
            let out_t: &mut [f32] = if m == 1 {
                out
            } else {
                transposed.resize(n * m, 0f32);
                &mut transposed
            };
            #[cfg(target_arch = "x86_64")]
            if let Some(kernel) = self.tiled {
                let act_rows: Vec<ActRow> = (0..m)
                    .map(|t| ActRow {
                        blocks: acts.row(t),
                        scales: acts.scales(t),
                    })
                    .collect();
                crate::threads::parallel_chunks_mut(out_t, per_task * m, |c, o| {
                    let r0 = c * per_task;
                    let nrows = o.len() / m;
                    let w =
                        &self.data.as_slice()[r0 * self.row_bytes..(r0 + nrows) * self.row_bytes];
                    // SAFETY: the kernel exists only on CPUs with AVX2,
                    // FMA and F16C; `w` holds `nrows` whole rows, each
                    // activation row matches the row length, and `o`
                    // holds `nrows * m` outputs.
                    unsafe { kernel(w, self.row_bytes, nrows, &act_rows, o) };
                });
                if m > 1 {
                    transpose_into(&transposed, n, m, out);
                }
                return;
            }
            crate::threads::parallel_chunks_mut(out_t, per_task * m, |c, o| {
                let r0 = c * per_task;
                for (i, row_out) in o.chunks_exact_mut(m).enumerate() {
                    let w = self.row(r0 + i);
                    for (t, v) in row_out.iter_mut().enumerate() {
                        *v = (self.dot)(&w, acts.row(t));
                    }
                }
            });
            if m > 1 {
                transpose_into(&transposed, n, m, out);
            }
        })
    }

    /// The interleaved-weights kernel: groups of 16 rows split across
    /// threads, every activation row against each group while its weights
    /// are in L1, outputs written in place.
    #[cfg(target_arch = "x86_64")]
    fn matmul_packed(&self, shape: PackedShape, acts: &QuantizedActs, m: usize, out: &mut [f32]) {
        let views: Vec<ActView> = (0..m)
            .map(|t| ActView {
                blocks: acts.row(t),
                scales: acts.scales(t),
                sums: acts.sums(t),
            })
            .collect();
        let groups = shape.groups();
        let per_task = groups.div_ceil(crate::threads::count() * 3).max(1);
        let dst = SharedOut(out.as_mut_ptr());
        crate::threads::parallel_for(groups.div_ceil(per_task), |task| {
            let g0 = task * per_task;
            let g1 = (g0 + per_task).min(groups);
            // SAFETY: the matrix is packed only on CPUs with AVX-512 VNNI
            // (`packed_shape`); the data holds `shape`'s layout, each view
            // is a full activation row with its scales and sums, and this
            // task writes only the columns of groups g0..g1 of the `m x n`
            // output, which no other task touches.
            unsafe {
                crate::quant::packed_avx512::matmul_groups(
                    &shape,
                    self.data.as_slice(),
                    g0,
                    g1,
                    &views,
                    dst.at(0),
                )
            };
        });
    }

    /// The dequantize-and-GEMM path.
    pub fn matmul_gemm(&self, x: &[f32], m: usize, out: &mut [f32]) {
        thread_local! {
            static TILE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
        }
        let n = self.rows;
        let k = self.cols;
        let dst = SharedOut(out.as_mut_ptr());
        let tiles = n.div_ceil(TILE_ROWS);
        crate::threads::parallel_for(tiles, |t| {
            let r0 = t * TILE_ROWS;
            let nt = TILE_ROWS.min(n - r0);
            TILE.with(|tile| {
                let mut tile = tile.borrow_mut();
                tile.resize(nt * k, 0.0);
                dequantize(self.wtype, &self.raw_rows(r0, nt), &mut tile[..nt * k]);
                // SAFETY: dst points to `m x n` f32s; this task writes only
                // columns r0..r0+nt, which no other task touches. lhs is
                // `m x k` row-major, rhs the tile viewed as `k x nt`.
                unsafe {
                    gemm::gemm(
                        m,
                        nt,
                        k,
                        dst.at(r0),
                        1,
                        n as isize,
                        false,
                        x.as_ptr(),
                        1,
                        k as isize,
                        tile.as_ptr(),
                        k as isize,
                        1,
                        0.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            });
        });
    }
}

/// The interleaved layout for this matrix, where the CPU has the kernel for
/// it and `LLM_SERVE_PACKED=0` does not turn it off.
fn packed_shape(wtype: WeightType, rows: usize, cols: usize) -> Option<PackedShape> {
    let format = PackedFormat::for_weight(wtype)?;
    let on = cfg!(target_arch = "x86_64")
        && crate::cpu::simd_level() >= crate::cpu::SimdLevel::Avx512
        && std::env::var("LLM_SERVE_PACKED").map_or(true, |v| v != "0");
    on.then(|| PackedShape::new(format, rows, cols))
}

#[cfg(target_arch = "x86_64")]
fn tiled_kernel(wtype: WeightType) -> Option<GemvFn> {
    let level = crate::cpu::simd_level();
    if level >= crate::cpu::SimdLevel::Avx2 {
        crate::quant::gemv_avx2::kernel(wtype, level)
    } else {
        None
    }
}

/// `out[t * n + r] = out_t[r * m + t]`.
fn transpose_into(out_t: &[f32], n: usize, m: usize, out: &mut [f32]) {
    for (r, row) in out_t.chunks_exact(m).enumerate() {
        for (t, v) in row.iter().enumerate() {
            out[t * n + r] = *v;
        }
    }
}

/// Rows per task: a few tasks per thread so uneven progress evens out,
/// and rows in even numbers (the tiled kernels pair rows).
fn rows_per_task(n: usize) -> usize {
    let tasks = crate::threads::count() * 3;
    (n.div_ceil(tasks).max(16) + 1) & !1
}

/// The output pointer shared by GEMM tasks that write disjoint columns.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint regions (see matmul_gemm).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}
impl SharedOut {
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: offset is inside the m x n output.
        unsafe { self.0.add(offset) }
    }
}
