//! Loading a PEFT LoRA directory for one base model: tensor names mapped to
//! (layer, projection), shapes and ranks checked against the model and
//! `max_lora_rank`, each module's scaling worked out, `B` transposed for
//! the expand kernel and, for GGUF llama bases, its q/k rows permuted the
//! way llama.cpp's converter permuted the base weights.

use super::peft::PeftConfig;
use super::{Fused, Projection};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::safetensors_store::SafetensorsStore;
use half::f16;
use llm_serve_kernels::lora::{LoraMatrix, LoraPart, LoraValues, MAX_RANK};
use llm_serve_kernels::{QMatrix, WeightType};
use std::collections::BTreeMap;
use std::path::Path;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const PICKLE_FILE: &str = "adapter_model.bin";

/// How adapter weights are kept in memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoraDtype {
    /// f32 files stay f32; f16 and bf16 files are kept as f16.
    #[default]
    Auto,
    F16,
    F32,
}

impl std::str::FromStr for LoraDtype {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(LoraDtype::Auto),
            "float16" | "half" | "f16" => Ok(LoraDtype::F16),
            "float32" | "float" | "f32" => Ok(LoraDtype::F32),
            other => Err(format!(
                "lora_dtype {other:?} is not one of auto, float16, float32"
            )),
        }
    }
}

/// Limits an adapter must respect.
#[derive(Clone, Copy, Debug)]
pub struct LoraOptions {
    /// vLLM's `max_lora_rank` (default 16).
    pub max_rank: usize,
    pub dtype: LoraDtype,
}

impl Default for LoraOptions {
    fn default() -> Self {
        LoraOptions {
            max_rank: 16,
            dtype: LoraDtype::Auto,
        }
    }
}

/// One adapted projection.
#[derive(Debug)]
struct LoraProj {
    /// `rank x in`.
    a: LoraMatrix,
    /// `rank x out`.
    bt: LoraMatrix,
    scale: f32,
    /// First column in its fused linear's output.
    col: usize,
}

/// A loaded adapter: per layer, the adapted parts of each fused linear.
pub struct LoraAdapter {
    layers: Vec<[Vec<LoraProj>; 4]>,
    /// The base shape it was checked against.
    hidden_size: usize,
    intermediate_size: usize,
    max_rank: usize,
    bytes: usize,
    modules: usize,
}

impl std::fmt::Debug for LoraAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LoraAdapter({} modules, rank <= {}, {} bytes)",
            self.modules, self.max_rank, self.bytes
        )
    }
}

impl LoraAdapter {
    /// Loads the adapter in `dir` for a model of `cfg`; `permute_qk` when
    /// the base's q/k rows are in GGUF's interleaved-rope order.
    pub fn load(
        dir: &Path,
        cfg: &ModelConfig,
        permute_qk: bool,
        opts: LoraOptions,
    ) -> Result<LoraAdapter> {
        let err = |detail: String| ModelError::Adapter {
            path: dir.to_path_buf(),
            detail,
        };
        let config_path = dir.join(CONFIG_FILE);
        let text = match std::fs::read_to_string(&config_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ModelError::AdapterNotFound(dir.to_path_buf()))
            }
            Err(e) => return Err(err(format!("cannot read {CONFIG_FILE}: {e}"))),
        };
        let peft = PeftConfig::parse(&text).map_err(err)?;
        let weights = dir.join(WEIGHTS_FILE);
        if !weights.is_file() {
            return Err(err(if dir.join(PICKLE_FILE).is_file() {
                format!("{PICKLE_FILE} is a PyTorch pickle, which is not loaded; convert it to {WEIGHTS_FILE} (PeftModel.from_pretrained(base, dir).save_pretrained(dir, safe_serialization=True))")
            } else {
                format!("{WEIGHTS_FILE} is missing")
            }));
        }
        let store =
            SafetensorsStore::open(&[weights]).map_err(|e| err(format!("{WEIGHTS_FILE}: {e}")))?;
        let pairs = pair_tensors(&store, cfg).map_err(err)?;
        if pairs.is_empty() {
            return Err(err(format!("{WEIGHTS_FILE} holds no LoRA weights")));
        }
        let max_rank = opts.max_rank.min(MAX_RANK);
        let mut layers: Vec<[Vec<LoraProj>; 4]> =
            (0..cfg.num_layers).map(|_| Default::default()).collect();
        let (mut bytes, mut rank_seen) = (0, 0);
        for ((layer, proj), names) in &pairs {
            let p = load_proj(
                &store, &peft, cfg, *layer, *proj, names, max_rank, permute_qk, opts.dtype,
            )
            .map_err(err)?;
            bytes += p.a.bytes() + p.bt.bytes();
            rank_seen = rank_seen.max(p.a.rows());
            layers[*layer][proj.fused() as usize].push(p);
        }
        Ok(LoraAdapter {
            layers,
            hidden_size: cfg.hidden_size,
            intermediate_size: cfg.intermediate_size,
            max_rank: rank_seen,
            bytes,
            modules: pairs.len(),
        })
    }

    /// The largest rank among its modules.
    pub fn max_rank(&self) -> usize {
        self.max_rank
    }

    /// Bytes of its weights in memory.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adapted modules (projections × layers).
    pub fn modules(&self) -> usize {
        self.modules
    }

    pub(crate) fn check_fits(&self, cfg: &ModelConfig) -> Result<()> {
        if self.layers.len() != cfg.num_layers
            || self.hidden_size != cfg.hidden_size
            || self.intermediate_size != cfg.intermediate_size
        {
            return Err(ModelError::Batch(
                "a LoRA adapter loaded for another model is in the step".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn parts(&self, layer: usize, fused: Fused) -> Vec<LoraPart<'_>> {
        self.layers
            .get(layer)
            .map(|l| {
                l[fused as usize]
                    .iter()
                    .map(|p| LoraPart {
                        a: &p.a,
                        bt: &p.bt,
                        scale: p.scale,
                        col: p.col,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The A and B tensor names of one module.
#[derive(Default)]
struct Names {
    a: Option<String>,
    b: Option<String>,
}

/// Groups the file's tensors by (layer, projection); any other tensor is
/// an error naming it.
fn pair_tensors(
    store: &SafetensorsStore,
    cfg: &ModelConfig,
) -> std::result::Result<BTreeMap<(usize, Projection), Names>, String> {
    let mut pairs: BTreeMap<(usize, Projection), Names> = BTreeMap::new();
    let mut names: Vec<&str> = store.names().collect();
    names.sort_unstable();
    for name in names {
        let (layer, proj, is_a) = parse_name(name).ok_or_else(|| {
            format!(
                "tensor {name:?} is not a LoRA weight this server applies (lora_A/lora_B of {} in model.layers.N)",
                Projection::NAMES.join(", ")
            )
        })?;
        if layer >= cfg.num_layers {
            return Err(format!(
                "tensor {name:?} adapts layer {layer}, but the base model has {} layers",
                cfg.num_layers
            ));
        }
        let e = pairs.entry((layer, proj)).or_default();
        let slot = if is_a { &mut e.a } else { &mut e.b };
        *slot = Some(name.to_string());
    }
    for ((layer, proj), n) in &pairs {
        if n.a.is_none() || n.b.is_none() {
            return Err(format!(
                "{} has only lora_{} (both lora_A and lora_B are needed)",
                proj.module_path(*layer),
                if n.a.is_some() { "A" } else { "B" }
            ));
        }
    }
    Ok(pairs)
}

/// `[base_model.model.]model.layers.N.{self_attn|mlp}.P.lora_{A|B}.weight`.
fn parse_name(name: &str) -> Option<(usize, Projection, bool)> {
    let rest = name.strip_prefix("base_model.model.").unwrap_or(name);
    let rest = rest.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (block, rest) = rest.split_once('.')?;
    let (module, rest) = rest.split_once('.')?;
    let proj = Projection::from_module(module)?;
    if proj.module_path(layer) != format!("model.layers.{layer}.{block}.{module}") {
        return None;
    }
    match rest {
        "lora_A.weight" => Some((layer, proj, true)),
        "lora_B.weight" => Some((layer, proj, false)),
        _ => None,
    }
}

/// A tensor's values in the form the adapter keeps them.
enum Values {
    F16(Vec<f16>),
    F32(Vec<f32>),
}

impl Values {
    fn len(&self) -> usize {
        match self {
            Values::F16(v) => v.len(),
            Values::F32(v) => v.len(),
        }
    }

    /// The transpose of a `rows x cols` matrix, its rows taken in the
    /// order `src` gives.
    fn transposed(&self, rows: usize, cols: usize, src: impl Fn(usize) -> usize) -> Values {
        fn t<T: Copy + Default>(
            v: &[T],
            rows: usize,
            cols: usize,
            src: impl Fn(usize) -> usize,
        ) -> Vec<T> {
            let mut out = vec![T::default(); rows * cols];
            for j in 0..rows {
                let row = &v[src(j) * cols..(src(j) + 1) * cols];
                for (k, &x) in row.iter().enumerate() {
                    out[k * rows + j] = x;
                }
            }
            out
        }
        match self {
            Values::F16(v) => Values::F16(t(v, rows, cols, src)),
            Values::F32(v) => Values::F32(t(v, rows, cols, src)),
        }
    }

    fn into_lora(self) -> LoraValues {
        match self {
            Values::F16(v) => LoraValues::F16(v),
            Values::F32(v) => LoraValues::F32(v),
        }
    }
}

/// Reads a tensor's values as f16 (`half`) or f32; f16 files kept as f16
/// are copied, not converted.
fn decode(
    store: &SafetensorsStore,
    name: &str,
    half: bool,
) -> std::result::Result<(Vec<usize>, Values), String> {
    let (wtype, dims, bytes) = store.raw(name).map_err(|e| e.to_string())?;
    if dims.len() != 2 {
        return Err(format!("{name} has shape {dims:?}, not a matrix"));
    }
    let values = match (wtype, half) {
        (WeightType::F16, true) => Values::F16(
            bytes
                .chunks_exact(2)
                .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
        ),
        (WeightType::F32, false) => Values::F32(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        _ => {
            let m =
                QMatrix::from_bytes(wtype, dims[0], dims[1], bytes).map_err(|e| e.to_string())?;
            let v = m.to_f32();
            if half {
                let h: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
                if h.iter().any(|x| !x.is_finite()) {
                    return Err(format!(
                        "{name} has values outside float16's range; set lora_dtype to float32"
                    ));
                }
                Values::F16(h)
            } else {
                Values::F32(v)
            }
        }
    };
    if values.len() != dims[0] * dims[1] {
        return Err(format!(
            "{name}: {} values for shape {dims:?}",
            values.len()
        ));
    }
    Ok((dims, values))
}

#[allow(clippy::too_many_arguments)]
fn load_proj(
    store: &SafetensorsStore,
    peft: &PeftConfig,
    cfg: &ModelConfig,
    layer: usize,
    proj: Projection,
    names: &Names,
    max_rank: usize,
    permute_qk: bool,
    dtype: LoraDtype,
) -> std::result::Result<LoraProj, String> {
    let module = proj.module_path(layer);
    let (a_name, b_name) = (
        names.a.as_deref().unwrap_or_default(),
        names.b.as_deref().unwrap_or_default(),
    );
    let half = match dtype {
        LoraDtype::F16 => true,
        LoraDtype::F32 => false,
        LoraDtype::Auto => [a_name, b_name]
            .iter()
            .any(|n| store.raw(n).is_ok_and(|(w, _, _)| w != WeightType::F32)),
    };
    let (a_dims, a) = decode(store, a_name, half)?;
    let (b_dims, b) = decode(store, b_name, half)?;
    let (in_f, out_f) = proj.shape(cfg);
    let rank = a_dims[0];
    if a_dims[1] != in_f || b_dims[0] != out_f || b_dims[1] != rank {
        return Err(format!(
            "{module}: lora_A is {} x {} and lora_B {} x {}, the base model needs r x {in_f} and {out_f} x r: the adapter was trained for another model",
            a_dims[0], a_dims[1], b_dims[0], b_dims[1]
        ));
    }
    if rank > max_rank {
        return Err(format!(
            "LoRA rank {rank} is greater than max_lora_rank {max_rank} ({module})."
        ));
    }
    let configured = peft.rank(&module);
    if configured != rank {
        return Err(format!(
            "{module}: the tensors have rank {rank}, adapter_config.json says {configured}"
        ));
    }
    // Bt[k][j] = B[row(j)][k], with row(j) the HF row that GGUF row j came
    // from (q and k of a GGUF llama base).
    let permuted = permute_qk && matches!(proj, Projection::Q | Projection::K);
    let head_dim = cfg.head_dim;
    let bt = b.transposed(out_f, rank, |j| {
        if permuted {
            gguf_row_source(j, head_dim)
        } else {
            j
        }
    });
    let a = LoraMatrix::new(rank, in_f, a.into_lora()).map_err(|e| e.to_string())?;
    let bt = LoraMatrix::new(rank, out_f, bt.into_lora()).map_err(|e| e.to_string())?;
    Ok(LoraProj {
        a,
        bt,
        scale: peft.scaling(&module) as f32,
        col: proj.column(cfg),
    })
}

/// llama.cpp's converter stores each head's rotary halves interleaved:
/// GGUF row `2i + h` of a head is Hugging Face row `h * d/2 + i`.
fn gguf_row_source(row: usize, head_dim: usize) -> usize {
    let (head, r) = (row / head_dim, row % head_dim);
    head * head_dim + (r % 2) * (head_dim / 2) + r / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_layers_and_projections() {
        assert_eq!(
            parse_name("base_model.model.model.layers.3.self_attn.k_proj.lora_B.weight"),
            Some((3, Projection::K, false))
        );
        assert_eq!(
            parse_name("model.layers.0.mlp.down_proj.lora_A.weight"),
            Some((0, Projection::Down, true))
        );
        for bad in [
            "base_model.model.model.layers.0.mlp.q_proj.lora_A.weight",
            "base_model.model.lm_head.lora_A.weight",
            "base_model.model.model.embed_tokens.lora_embedding_A",
            "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector",
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias",
            "base_model.model.model.layers.x.self_attn.q_proj.lora_A.weight",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn gguf_rows_come_from_interleaved_halves() {
        // head_dim 4: GGUF rows 0..4 hold HF rows 0, 2, 1, 3 (per head).
        let rows: Vec<usize> = (0..8).map(|r| gguf_row_source(r, 4)).collect();
        assert_eq!(rows, [0, 2, 1, 3, 4, 6, 5, 7]);
    }
}
