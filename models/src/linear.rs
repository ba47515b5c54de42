//! Linear projections, with projections that read the same input (Q/K/V,
//! gate/up) fused into one matrix product where their formats allow.

use crate::error::Result;
use candle_core::{Device, Tensor};
use llm_serve_kernels::ops::{ApplyExt, QMatMul};
use llm_serve_kernels::QMatrix;

pub struct Linear {
    /// Row blocks of the (conceptually stacked) weight, in output order.
    parts: Vec<QMatrix>,
    bias: Option<Tensor>,
}

impl Linear {
    /// Stacks `mats` (same input size) into one projection; neighbours with
    /// the same format are fused into a single matrix.
    pub fn stacked(mats: Vec<QMatrix>, bias: Option<Vec<f32>>, device: &Device) -> Result<Self> {
        let out_features: usize = mats.iter().map(QMatrix::rows).sum();
        let mut parts: Vec<QMatrix> = Vec::new();
        for m in mats {
            match parts.last_mut() {
                Some(last) if last.wtype() == m.wtype() && last.cols() == m.cols() => {
                    *last = QMatrix::concat_rows(&[last, &m])?;
                }
                _ => parts.push(m),
            }
        }
        let bias = match bias {
            Some(b) => Some(Tensor::from_vec(b, out_features, device)?),
            None => None,
        };
        Ok(Linear { parts, bias })
    }

    /// `x [T, in] -> [T, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = if let [only] = self.parts.as_slice() {
            x.op1(&QMatMul(only))?
        } else {
            let outs = self
                .parts
                .iter()
                .map(|p| x.op1(&QMatMul(p)))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Tensor::cat(&outs, 1)?
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}
