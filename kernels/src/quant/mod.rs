//! GGML block formats: layouts, dequantization, activation quantization and
//! the dot products between weight blocks and quantized activations.

pub mod act;
pub mod blocks;
pub mod dequant;
pub mod dot;
mod dot_avx2;
pub mod dot_ref;
pub mod gemv_avx2;
pub mod packed;
pub mod packed_avx512;

use crate::{Error, Result};

/// How a weight matrix is stored in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum WeightType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
}

impl WeightType {
    /// Elements per block.
    pub fn block_elems(self) -> usize {
        match self {
            WeightType::F32 | WeightType::F16 | WeightType::BF16 => 1,
            WeightType::Q4_0
            | WeightType::Q4_1
            | WeightType::Q5_0
            | WeightType::Q5_1
            | WeightType::Q8_0 => 32,
            WeightType::Q2K
            | WeightType::Q3K
            | WeightType::Q4K
            | WeightType::Q5K
            | WeightType::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        use std::mem::size_of;
        match self {
            WeightType::F32 => 4,
            WeightType::F16 | WeightType::BF16 => 2,
            WeightType::Q4_0 => size_of::<blocks::BlockQ4_0>(),
            WeightType::Q4_1 => size_of::<blocks::BlockQ4_1>(),
            WeightType::Q5_0 => size_of::<blocks::BlockQ5_0>(),
            WeightType::Q5_1 => size_of::<blocks::BlockQ5_1>(),
            WeightType::Q8_0 => size_of::<blocks::BlockQ8_0>(),
            WeightType::Q2K => size_of::<blocks::BlockQ2K>(),
            WeightType::Q3K => size_of::<blocks::BlockQ3K>(),
            WeightType::Q4K => size_of::<blocks::BlockQ4K>(),
            WeightType::Q5K => size_of::<blocks::BlockQ5K>(),
            WeightType::Q6K => size_of::<blocks::BlockQ6K>(),
        }
    }

    /// Bytes of one row of `cols` elements; errors if `cols` is not a whole
    /// number of blocks.
    pub fn row_bytes(self, cols: usize) -> Result<usize> {
        let be = self.block_elems();
        if !cols.is_multiple_of(be) {
            return Err(Error::Invalid(format!(
                "a row of {cols} elements is not a whole number of {self:?} blocks ({be} elements each)"
            )));
        }
        Ok(cols / be * self.block_bytes())
    }

    pub fn name(self) -> &'static str {
        match self {
            WeightType::F32 => "F32",
            WeightType::F16 => "F16",
            WeightType::BF16 => "BF16",
            WeightType::Q4_0 => "Q4_0",
            WeightType::Q4_1 => "Q4_1",
            WeightType::Q5_0 => "Q5_0",
            WeightType::Q5_1 => "Q5_1",
            WeightType::Q8_0 => "Q8_0",
            WeightType::Q2K => "Q2_K",
            WeightType::Q3K => "Q3_K",
            WeightType::Q4K => "Q4_K",
            WeightType::Q5K => "Q5_K",
            WeightType::Q6K => "Q6_K",
        }
    }

    /// The candle GGML type with the same layout.
    pub fn to_ggml(self) -> candle_core::quantized::GgmlDType {
        use candle_core::quantized::GgmlDType as G;
        match self {
            WeightType::F32 => G::F32,
            WeightType::F16 => G::F16,
            WeightType::BF16 => G::BF16,
            WeightType::Q4_0 => G::Q4_0,
            WeightType::Q4_1 => G::Q4_1,
            WeightType::Q5_0 => G::Q5_0,
            WeightType::Q5_1 => G::Q5_1,
            WeightType::Q8_0 => G::Q8_0,
            WeightType::Q2K => G::Q2K,
            WeightType::Q3K => G::Q3K,
            WeightType::Q4K => G::Q4K,
            WeightType::Q5K => G::Q5K,
            WeightType::Q6K => G::Q6K,
        }
    }

    /// The weight type for a candle GGML type, if the kernels support it.
    pub fn from_ggml(t: candle_core::quantized::GgmlDType) -> Result<Self> {
        use candle_core::quantized::GgmlDType as G;
        Ok(match t {
            G::F32 => WeightType::F32,
            G::F16 => WeightType::F16,
            G::BF16 => WeightType::BF16,
            G::Q4_0 => WeightType::Q4_0,
            G::Q4_1 => WeightType::Q4_1,
            G::Q5_0 => WeightType::Q5_0,
            G::Q5_1 => WeightType::Q5_1,
            G::Q8_0 => WeightType::Q8_0,
            G::Q2K => WeightType::Q2K,
            G::Q3K => WeightType::Q3K,
            G::Q4K => WeightType::Q4K,
            G::Q5K => WeightType::Q5K,
            G::Q6K => WeightType::Q6K,
            other => return Err(Error::UnsupportedType(format!("{other:?} as a weight"))),
        })
    }

    pub const ALL: [WeightType; 13] = [
        WeightType::F32,
        WeightType::F16,
        WeightType::BF16,
        WeightType::Q4_0,
        WeightType::Q4_1,
        WeightType::Q5_0,
        WeightType::Q5_1,
        WeightType::Q8_0,
        WeightType::Q2K,
        WeightType::Q3K,
        WeightType::Q4K,
        WeightType::Q5K,
        WeightType::Q6K,
    ];
}

impl std::fmt::Display for WeightType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
