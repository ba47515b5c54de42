//! Rotary position embeddings with a position per token, so the tokens of a
//! ragged batch (different sequences at different offsets) rotate in one
//! pass.

use crate::{shape_err, Result};

/// Which elements form a rotating pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// `(x[2i], x[2i+1])`: GGUF llama weights (q/k rows permuted by the
    /// converter).
    Interleaved,
    /// `(x[i], x[i + d/2])`: Hugging Face llama/qwen2 and GGUF qwen2.
    HalfSplit,
}

/// Precomputed cos/sin for positions `0..max_positions`.
#[derive(Clone, Debug)]
pub struct RopeTable {
    rot_dim: usize,
    max_positions: usize,
    style: RopeStyle,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// `inv_freq` has `rot_dim / 2` entries (scaling already applied);
    /// `attention_factor` multiplies cos and sin (1.0 for plain rope).
    pub fn new(
        inv_freq: &[f32],
        max_positions: usize,
        style: RopeStyle,
        attention_factor: f32,
    ) -> Self {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for &f in inv_freq {
                let angle = (p as f32 * f) as f64;
                cos.push(angle.cos() as f32 * attention_factor);
                sin.push(angle.sin() as f32 * attention_factor);
            }
        }
        RopeTable {
            rot_dim: 2 * half,
            max_positions,
            style,
            cos,
            sin,
        }
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Rotates `x` (`positions.len()` tokens of `n_heads * head_dim`) in
    /// place; only the first `rot_dim` elements of each head rotate.
    pub fn apply(
        &self,
        x: &mut [f32],
        positions: &[usize],
        n_heads: usize,
        head_dim: usize,
    ) -> Result<()> {
        let row = n_heads * head_dim;
        if x.len() != positions.len() * row || self.rot_dim > head_dim {
            return Err(shape_err(
                "rope",
                format!(
                    "{} values for {} tokens x {n_heads} heads x {head_dim} (rotary dim {})",
                    x.len(),
                    positions.len(),
                    self.rot_dim
                ),
            ));
        }
        if let Some(&p) = positions.iter().find(|&&p| p >= self.max_positions) {
            return Err(shape_err(
                "rope",
                format!("position {p} beyond the table of {}", self.max_positions),
            ));
        }
        let half = self.rot_dim / 2;
        for (tok, &p) in x.chunks_exact_mut(row).zip(positions) {
            let cos = &self.cos[p * half..(p + 1) * half];
            let sin = &self.sin[p * half..(p + 1) * half];
            for head in tok.chunks_exact_mut(head_dim) {
                match self.style {
                    RopeStyle::Interleaved => {
                        for i in 0..half {
                            let (a, b) = (head[2 * i], head[2 * i + 1]);
                            head[2 * i] = a * cos[i] - b * sin[i];
                            head[2 * i + 1] = a * sin[i] + b * cos[i];
                        }
                    }
                    RopeStyle::HalfSplit => {
                        let (lo, hi) = head[..self.rot_dim].split_at_mut(half);
                        for i in 0..half {
                            let (a, b) = (lo[i], hi[i]);
                            lo[i] = a * cos[i] - b * sin[i];
                            hi[i] = b * cos[i] + a * sin[i];
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
