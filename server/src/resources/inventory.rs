//! What the node has: CPUs and memory from the OS, GPUs from NVML (no
//! driver means no GPUs, which is normal), then `llm-serve start`'s
//! `--num-cpus`, `--num-gpus`, `--memory` and `--resources` overrides, as
//! `ray start` takes them.

use serde::Serialize;
use std::collections::BTreeMap;

/// One GPU of the node.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Gpu {
    /// The index `CUDA_VISIBLE_DEVICES` names it by.
    pub index: u32,
    /// The device name NVML reports, or `declared` for a GPU given by
    /// `--num-gpus` beyond those NVML found.
    pub name: String,
    pub memory_bytes: Option<u64>,
    /// Ray's accelerator type (`A100`, `H100`, ...), when known.
    pub accelerator_type: Option<String>,
}

/// The node's resources.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeResources {
    pub cpus: f64,
    pub memory_bytes: f64,
    pub gpus: Vec<Gpu>,
    /// Custom resources (`--resources`), by name.
    pub custom: BTreeMap<String, f64>,
}

/// `llm-serve start`'s resource flags.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub num_cpus: Option<f64>,
    pub num_gpus: Option<u32>,
    pub memory_bytes: Option<f64>,
    pub resources: BTreeMap<String, f64>,
}

impl NodeResources {
    /// Reads the node, then applies `overrides`.
    pub fn detect(overrides: &Overrides) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let memory_bytes = llm_serve_engine::os_available_memory_bytes().unwrap_or(0) as f64;
        NodeResources {
            cpus,
            memory_bytes,
            gpus: nvml_gpus(),
            custom: BTreeMap::new(),
        }
        .with(overrides)
    }

    /// These resources with `o` applied: counts replaced, GPUs cut to
    /// `num_gpus` or extended with declared ones.
    pub fn with(mut self, o: &Overrides) -> Self {
        if let Some(c) = o.num_cpus {
            self.cpus = c;
        }
        if let Some(m) = o.memory_bytes {
            self.memory_bytes = m;
        }
        if let Some(n) = o.num_gpus {
            self.gpus.truncate(n as usize);
            for index in self.gpus.len() as u32..n {
                self.gpus.push(Gpu {
                    index,
                    name: "declared".into(),
                    memory_bytes: None,
                    accelerator_type: None,
                });
            }
        }
        self.custom.extend(o.resources.clone());
        self
    }

    /// The accelerator types present: the GPUs' and those declared as
    /// `accelerator_type:<T>` resources (Ray's spelling).
    pub fn accelerator_types(&self) -> Vec<String> {
        let mut types: Vec<String> = self
            .gpus
            .iter()
            .filter_map(|g| g.accelerator_type.clone())
            .chain(
                self.custom
                    .keys()
                    .filter_map(|k| k.strip_prefix("accelerator_type:").map(str::to_owned)),
            )
            .collect();
        types.sort();
        types.dedup();
        types
    }
}

/// Ray's accelerator type of an NVIDIA device name: the word after the
/// vendor (`NVIDIA A100-SXM4-80GB` → `A100`, `Tesla V100-SXM2-16GB` →
/// `V100`, `NVIDIA H200` → `H200`).
pub fn accelerator_type_of(name: &str) -> Option<String> {
    let mut words = name.split_whitespace();
    words.next()?;
    let word = words.next()?;
    let t: String = word
        .chars()
        .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        .collect();
    (!t.is_empty()).then_some(t)
}

/// The GPUs NVML sees; none when there is no driver.
fn nvml_gpus() -> Vec<Gpu> {
    let nvml = match nvml_wrapper::Nvml::init() {
        Ok(n) => n,
        Err(e) => {
            tracing::debug!("no NVIDIA GPUs (NVML: {e})");
            return Vec::new();
        }
    };
    let count = nvml.device_count().unwrap_or(0);
    (0..count)
        .filter_map(|index| {
            let device = nvml.device_by_index(index).ok()?;
            let name = device.name().unwrap_or_else(|_| "unknown".into());
            Some(Gpu {
                index,
                accelerator_type: accelerator_type_of(&name),
                memory_bytes: device.memory_info().ok().map(|m| m.total),
                name,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accelerator_types_follow_ray() {
        assert_eq!(
            accelerator_type_of("NVIDIA A100-SXM4-80GB").as_deref(),
            Some("A100")
        );
        assert_eq!(accelerator_type_of("NVIDIA H200").as_deref(), Some("H200"));
        assert_eq!(
            accelerator_type_of("Tesla V100-SXM2-16GB").as_deref(),
            Some("V100")
        );
        assert_eq!(accelerator_type_of("NVIDIA"), None);
    }

    #[test]
    fn overrides_cut_or_declare_gpus() {
        let node = NodeResources {
            cpus: 2.0,
            memory_bytes: 1e9,
            gpus: vec![],
            custom: BTreeMap::new(),
        };
        let o = Overrides {
            num_cpus: Some(8.0),
            num_gpus: Some(2),
            memory_bytes: None,
            resources: [("accelerator_type:L4".to_string(), 1.0)].into(),
        };
        let n = node.with(&o);
        assert_eq!(n.cpus, 8.0);
        assert_eq!(n.gpus.len(), 2);
        assert_eq!(n.gpus[1].index, 1);
        assert_eq!(n.accelerator_types(), ["L4"]);
        let n = n.with(&Overrides {
            num_gpus: Some(1),
            ..Default::default()
        });
        assert_eq!(n.gpus.len(), 1);
    }
}
