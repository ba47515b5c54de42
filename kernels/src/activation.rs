//! The SwiGLU activation of llama-family MLPs, fused with the split of the
//! gate/up projection: `out = silu(gate) * up`.

use crate::{shape_err, Result};

/// `gate_up` holds rows `[gate (inter), up (inter)]`; `out` rows of `inter`.
pub fn silu_mul(gate_up: &[f32], inter: usize, out: &mut [f32]) -> Result<()> {
    if inter == 0 || !gate_up.len().is_multiple_of(2 * inter) || out.len() * 2 != gate_up.len() {
        return Err(shape_err(
            "silu_mul",
            format!(
                "gate_up {} / inter {inter} / out {}",
                gate_up.len(),
                out.len()
            ),
        ));
    }
    for (gu, o) in gate_up
        .chunks_exact(2 * inter)
        .zip(out.chunks_exact_mut(inter))
    {
        let (g, u) = gu.split_at(inter);
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    }
    Ok(())
}
