//! Weight matrices repacked for the AVX-512 VNNI kernel: rows in groups of
//! 16, interleaved so that one 512-bit register holds the same four bytes
//! of all 16 rows (lane = output row).
//!
//! Row-major GGML blocks make a SIMD product reduce across lanes for every
//! output; with rows interleaved, one `vpdpbusd` against a broadcast group
//! of four activation bytes advances 16 outputs at once and no horizontal
//! sum is ever needed. Each output is still computed by a fixed sequence of
//! operations that depends only on its row and its activation row, so the
//! products stay batch-invariant bit for bit.
//!
//! Layout, per group of 16 rows and per 32-element block, one record of
//! `record_bytes()`:
//! - `d` of the 16 rows as f16 (32 bytes), then `m` for Q4_1 (32 bytes);
//! - Q4_0 / Q4_1: 4 x 64 bytes; register `j` holds, per row, the raw
//!   nibble bytes `qs[4j..4j+4]` (low nibbles are elements `4j..4j+4`, high
//!   nibbles elements `16+4j..16+4j+4`);
//! - Q8_0: 8 x 64 bytes; register `j` holds, per row, elements `4j..4j+4`
//!   offset by 128 (stored unsigned: `vpdpbusd` multiplies unsigned by
//!   signed bytes; the offset is removed exactly with the activation sums).
//!
//! Groups are stored one after another, each as its records in block order,
//! so a group's weights are one contiguous stream. Rows past the end of the
//! matrix (the last group's padding) are zero.

use super::blocks::{f16_bits, QK};
use super::WeightType;
use crate::buffer::AlignedBytes;

/// Rows per interleaved group (one 512-bit register of f32 outputs).
pub const GROUP: usize = 16;

/// The block formats that have an interleaved layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum PackedFormat {
    Q4_0,
    Q4_1,
    Q8_0,
}

impl PackedFormat {
    pub fn for_weight(w: WeightType) -> Option<PackedFormat> {
        match w {
            WeightType::Q4_0 => Some(PackedFormat::Q4_0),
            WeightType::Q4_1 => Some(PackedFormat::Q4_1),
            WeightType::Q8_0 => Some(PackedFormat::Q8_0),
            _ => None,
        }
    }

    pub fn weight(self) -> WeightType {
        match self {
            PackedFormat::Q4_0 => WeightType::Q4_0,
            PackedFormat::Q4_1 => WeightType::Q4_1,
            PackedFormat::Q8_0 => WeightType::Q8_0,
        }
    }

    /// Bytes of the per-row scales at the start of a record.
    pub const fn scale_bytes(self) -> usize {
        match self {
            PackedFormat::Q4_1 => 4 * GROUP,
            PackedFormat::Q4_0 | PackedFormat::Q8_0 => 2 * GROUP,
        }
    }

    /// 64-byte registers of quantized values in a record.
    pub const fn quant_regs(self) -> usize {
        match self {
            PackedFormat::Q4_0 | PackedFormat::Q4_1 => 4,
            PackedFormat::Q8_0 => 8,
        }
    }

    /// Bytes of one (group, block) record.
    pub const fn record_bytes(self) -> usize {
        self.scale_bytes() + 64 * self.quant_regs()
    }

    /// Offset of the quantized values inside a raw GGML block.
    const fn raw_qs_offset(self) -> usize {
        match self {
            PackedFormat::Q4_1 => 4,
            PackedFormat::Q4_0 | PackedFormat::Q8_0 => 2,
        }
    }

    fn raw_block_bytes(self) -> usize {
        self.weight().block_bytes()
    }
}

/// Shape of a packed matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedShape {
    pub format: PackedFormat,
    pub rows: usize,
    /// 32-element blocks per row.
    pub blocks: usize,
}

impl PackedShape {
    pub fn new(format: PackedFormat, rows: usize, cols: usize) -> PackedShape {
        PackedShape {
            format,
            rows,
            blocks: cols / QK,
        }
    }

    pub fn groups(&self) -> usize {
        self.rows.div_ceil(GROUP)
    }

    /// Bytes of one group's records.
    pub fn group_bytes(&self) -> usize {
        self.blocks * self.format.record_bytes()
    }

    pub fn total_bytes(&self) -> usize {
        self.groups() * self.group_bytes()
    }

    fn raw_row_bytes(&self) -> usize {
        self.blocks * self.format.raw_block_bytes()
    }

    /// Where the record of `group`'s block `b` starts.
    fn record(&self, group: usize, b: usize) -> usize {
        group * self.group_bytes() + b * self.format.record_bytes()
    }
}

/// Interleaves row-major GGML blocks (`shape.rows` rows) into the packed
/// layout.
pub fn pack(shape: PackedShape, raw: &[u8]) -> AlignedBytes {
    let f = shape.format;
    let row_bytes = shape.raw_row_bytes();
    debug_assert_eq!(raw.len(), shape.rows * row_bytes);
    let mut out = AlignedBytes::zeroed(shape.total_bytes());
    let dst = out.as_mut_slice();
    for r in 0..shape.rows {
        let (g, lane) = (r / GROUP, r % GROUP);
        for b in 0..shape.blocks {
            let src = &raw[r * row_bytes + b * f.raw_block_bytes()..][..f.raw_block_bytes()];
            let rec = &mut dst[shape.record(g, b)..][..f.record_bytes()];
            rec[2 * lane..2 * lane + 2].copy_from_slice(&src[0..2]);
            if f == PackedFormat::Q4_1 {
                rec[2 * GROUP + 2 * lane..2 * GROUP + 2 * lane + 2].copy_from_slice(&src[2..4]);
            }
            let qs = &src[f.raw_qs_offset()..];
            let quants = &mut rec[f.scale_bytes()..];
            for j in 0..f.quant_regs() {
                let to = &mut quants[64 * j + 4 * lane..64 * j + 4 * lane + 4];
                to.copy_from_slice(&qs[4 * j..4 * j + 4]);
                if f == PackedFormat::Q8_0 {
                    to.iter_mut().for_each(|v| *v ^= 0x80);
                }
            }
        }
    }
    out
}

/// Rebuilds the row-major GGML blocks of rows `r0..r0 + n`.
pub fn unpack_rows(shape: PackedShape, packed: &[u8], r0: usize, n: usize) -> Vec<u8> {
    let f = shape.format;
    let bb = f.raw_block_bytes();
    let mut out = vec![0u8; n * shape.raw_row_bytes()];
    for (i, row) in out.chunks_exact_mut(shape.raw_row_bytes()).enumerate() {
        let r = r0 + i;
        let (g, lane) = (r / GROUP, r % GROUP);
        for (b, blk) in row.chunks_exact_mut(bb).enumerate() {
            let rec = &packed[shape.record(g, b)..][..f.record_bytes()];
            blk[0..2].copy_from_slice(&rec[2 * lane..2 * lane + 2]);
            if f == PackedFormat::Q4_1 {
                blk[2..4].copy_from_slice(&rec[2 * GROUP + 2 * lane..2 * GROUP + 2 * lane + 2]);
            }
            let quants = &rec[f.scale_bytes()..];
            let qs = &mut blk[f.raw_qs_offset()..];
            for j in 0..f.quant_regs() {
                let from = &quants[64 * j + 4 * lane..64 * j + 4 * lane + 4];
                for (q, v) in qs[4 * j..4 * j + 4].iter_mut().zip(from) {
                    *q = if f == PackedFormat::Q8_0 {
                        v ^ 0x80
                    } else {
                        *v
                    };
                }
            }
        }
    }
    out
}

/// One activation row as the packed kernels read it: raw Q8_0 / Q8_1 blocks,
/// their `[d, s]` scales as f32 and (Q8_0) the integer sum of each block.
#[derive(Clone, Copy)]
pub struct ActView<'a> {
    pub blocks: &'a [u8],
    pub scales: &'a [f32],
    pub sums: &'a [i32],
}

/// The exact arithmetic of the SIMD kernel, one output at a time: the
/// reference the kernel is tested against bit for bit.
pub fn dot_reference(shape: PackedShape, packed: &[u8], row: usize, act: ActView) -> f32 {
    let f = shape.format;
    let (g, lane) = (row / GROUP, row % GROUP);
    let act_block = if f == PackedFormat::Q4_1 { 36 } else { 34 };
    let act_qs = if f == PackedFormat::Q4_1 { 4 } else { 2 };
    let mut acc = 0f32;
    let mut macc = 0f32;
    for b in 0..shape.blocks {
        let rec = &packed[shape.record(g, b)..][..f.record_bytes()];
        let dw = f16_bits(u16::from_le_bytes([rec[2 * lane], rec[2 * lane + 1]]));
        let qa = &act.blocks[b * act_block + act_qs..][..QK];
        let quants = &rec[f.scale_bytes()..];
        let mut isum = 0i32;
        for j in 0..f.quant_regs() {
            for i in 0..4 {
                let w = quants[64 * j + 4 * lane + i];
                match f {
                    PackedFormat::Q8_0 => isum += w as i32 * qa[4 * j + i] as i8 as i32,
                    PackedFormat::Q4_0 | PackedFormat::Q4_1 => {
                        isum += (w & 0x0F) as i32 * qa[4 * j + i] as i8 as i32;
                        isum += (w >> 4) as i32 * qa[16 + 4 * j + i] as i8 as i32;
                    }
                }
            }
        }
        match f {
            PackedFormat::Q4_0 => isum -= 8 * act.sums[b],
            PackedFormat::Q8_0 => isum -= 128 * act.sums[b],
            PackedFormat::Q4_1 => {}
        }
        acc = (isum as f32).mul_add(dw * act.scales[2 * b], acc);
        if f == PackedFormat::Q4_1 {
            let o = 2 * GROUP + 2 * lane;
            let mw = f16_bits(u16::from_le_bytes([rec[o], rec[o + 1]]));
            macc = mw.mul_add(act.scales[2 * b + 1], macc);
        }
    }
    acc + macc
}
