//! RMSNorm: `y = x / sqrt(mean(x^2) + eps) * weight`, row by row.

use crate::{shape_err, Result};

pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) -> Result<()> {
    let d = weight.len();
    if d == 0 || !x.len().is_multiple_of(d) || out.len() != x.len() {
        return Err(shape_err(
            "rms_norm",
            format!("x {} / weight {d} / out {}", x.len(), out.len()),
        ));
    }
    for (xr, yr) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let mut lanes = [0f32; 8];
        let mut chunks = xr.chunks_exact(8);
        for c in &mut chunks {
            for l in 0..8 {
                lanes[l] += c[l] * c[l];
            }
        }
        let mut ss: f32 = lanes.iter().sum();
        ss += chunks.remainder().iter().map(|v| v * v).sum::<f32>();
        let scale = 1.0 / (ss / d as f32 + eps).sqrt();
        for ((y, v), w) in yr.iter_mut().zip(xr).zip(weight) {
            *y = v * scale * w;
        }
    }
    Ok(())
}
