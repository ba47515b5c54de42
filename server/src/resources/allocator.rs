//! Places replicas on the node's resources. Amounts are kept in units of
//! 1/10000 (as Ray does) so fractions add up exactly. Fractional GPU
//! requests go to the fullest GPU that still has room (best fit packs
//! shares together and keeps whole GPUs free); whole-GPU requests take
//! entirely free GPUs.

use super::inventory::NodeResources;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

const UNIT: f64 = 10_000.0;

fn units(x: f64) -> u64 {
    (x.max(0.0) * UNIT).round() as u64
}

fn amount(u: u64) -> f64 {
    u as f64 / UNIT
}

/// What one replica asks for (`ray_actor_options`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ResourceRequest {
    pub num_cpus: f64,
    pub num_gpus: f64,
    pub memory_bytes: f64,
    pub resources: BTreeMap<String, f64>,
    pub accelerator_type: Option<String>,
}

impl ResourceRequest {
    /// Ray's way of writing a request: `{"CPU": 1.0, "GPU": 0.5, ...}`.
    pub fn describe(&self) -> String {
        let mut parts = vec![format!("\"CPU\": {}", self.num_cpus)];
        if self.num_gpus > 0.0 {
            parts.push(format!("\"GPU\": {}", self.num_gpus));
        }
        if self.memory_bytes > 0.0 {
            parts.push(format!("\"memory\": {}", self.memory_bytes));
        }
        for (k, v) in &self.resources {
            parts.push(format!("\"{k}\": {v}"));
        }
        if let Some(t) = &self.accelerator_type {
            parts.push(format!("\"accelerator_type:{t}\": 0.001"));
        }
        format!("{{{}}}", parts.join(", "))
    }
}

/// What a placed replica holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Allocation {
    cpus: u64,
    memory: u64,
    /// GPU index and the share of it held.
    gpus: Vec<(u32, u64)>,
    resources: BTreeMap<String, u64>,
    pub num_cpus: f64,
    pub memory_bytes: f64,
}

impl Allocation {
    /// `CUDA_VISIBLE_DEVICES` for the replica: its GPUs, or empty.
    pub fn cuda_visible_devices(&self) -> String {
        self.gpus
            .iter()
            .map(|(i, _)| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The share of each of its GPUs the replica may use (its KV cache
    /// is sized from this fraction of the device's memory).
    pub fn gpu_memory_fraction(&self) -> Option<f64> {
        self.gpus.first().map(|(_, share)| amount(*share).min(1.0))
    }

    /// Compute threads: the CPUs reserved, rounded up, at least one.
    pub fn threads(&self) -> usize {
        (self.num_cpus.ceil() as usize).max(1)
    }
}

/// Why a replica does not fit.
#[derive(Clone, Debug, PartialEq)]
pub struct Shortage {
    /// `CPU`, `GPU`, `memory`, a custom resource, or
    /// `accelerator_type:<T>`.
    pub resource: String,
    pub requested: f64,
    pub available: f64,
    pub total: f64,
}

impl fmt::Display for Shortage {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.resource.starts_with("accelerator_type:") && self.total == 0.0 {
            return write!(f, "this node has no {}", self.resource);
        }
        write!(
            f,
            "not enough {}: a replica needs {}, {} of {} is free",
            self.resource, self.requested, self.available, self.total
        )
    }
}

/// A shortage of `resource`, with amounts in units.
fn short(resource: &str, requested: f64, available: u64, total: u64) -> Shortage {
    Shortage {
        resource: resource.to_string(),
        requested,
        available: amount(available),
        total: amount(total),
    }
}

/// The node's resources and what replicas hold of them.
#[derive(Debug)]
pub struct Allocator {
    node: NodeResources,
    cpus_used: u64,
    memory_used: u64,
    gpu_used: Vec<u64>,
    custom_used: BTreeMap<String, u64>,
}

impl Allocator {
    pub fn new(node: NodeResources) -> Self {
        let gpus = node.gpus.len();
        Allocator {
            node,
            cpus_used: 0,
            memory_used: 0,
            gpu_used: vec![0; gpus],
            custom_used: BTreeMap::new(),
        }
    }

    /// Reserves `req`, or says which resource is short.
    pub fn allocate(&mut self, req: &ResourceRequest) -> Result<Allocation, Shortage> {
        let cpus = units(req.num_cpus);
        let total_cpus = units(self.node.cpus);
        if self.cpus_used + cpus > total_cpus {
            return Err(short(
                "CPU",
                req.num_cpus,
                total_cpus.saturating_sub(self.cpus_used),
                total_cpus,
            ));
        }
        let memory = req.memory_bytes.max(0.0).round() as u64;
        let total_memory = self.node.memory_bytes.max(0.0) as u64;
        if memory > 0 && self.memory_used + memory > total_memory {
            return Err(Shortage {
                resource: "memory".into(),
                requested: memory as f64,
                available: total_memory.saturating_sub(self.memory_used) as f64,
                total: total_memory as f64,
            });
        }
        let mut resources = BTreeMap::new();
        for (name, &want) in &req.resources {
            let want = units(want);
            let total = self.node.custom.get(name).map_or(0, |&t| units(t));
            let used = self.custom_used.get(name).copied().unwrap_or(0);
            if used + want > total {
                return Err(short(name, amount(want), total.saturating_sub(used), total));
            }
            resources.insert(name.clone(), want);
        }
        let eligible = self.eligible_gpus(req)?;
        let gpus = self.pick_gpus(req, &eligible)?;
        self.cpus_used += cpus;
        self.memory_used += memory;
        for (i, share) in &gpus {
            self.gpu_used[*i as usize] += share;
        }
        for (name, want) in &resources {
            *self.custom_used.entry(name.clone()).or_default() += want;
        }
        let gpus = gpus
            .into_iter()
            .map(|(i, share)| (self.node.gpus[i as usize].index, share))
            .collect();
        Ok(Allocation {
            cpus,
            memory,
            gpus,
            resources,
            num_cpus: req.num_cpus,
            memory_bytes: memory as f64,
        })
    }

    /// The node's `memory` resource in bytes.
    pub fn node_memory_bytes(&self) -> f64 {
        self.node.memory_bytes
    }

    /// Gives back what `a` held.
    pub fn release(&mut self, a: &Allocation) {
        self.cpus_used = self.cpus_used.saturating_sub(a.cpus);
        self.memory_used = self.memory_used.saturating_sub(a.memory);
        for (index, share) in &a.gpus {
            if let Some(pos) = self.node.gpus.iter().position(|g| g.index == *index) {
                self.gpu_used[pos] = self.gpu_used[pos].saturating_sub(*share);
            }
        }
        for (name, used) in &a.resources {
            if let Some(u) = self.custom_used.get_mut(name) {
                *u = u.saturating_sub(*used);
            }
        }
    }

    /// Free amounts, Ray style (`{"CPU": 1.5, "GPU": 0.5, ...}`).
    pub fn available(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        out.insert(
            "CPU".to_string(),
            amount(units(self.node.cpus).saturating_sub(self.cpus_used)),
        );
        if !self.node.gpus.is_empty() {
            let free: u64 = self
                .gpu_used
                .iter()
                .map(|u| (UNIT as u64).saturating_sub(*u))
                .sum();
            out.insert("GPU".to_string(), amount(free));
        }
        out.insert(
            "memory".to_string(),
            (self.node.memory_bytes.max(0.0) as u64).saturating_sub(self.memory_used) as f64,
        );
        for (name, total) in &self.node.custom {
            let used = self.custom_used.get(name).copied().unwrap_or(0);
            out.insert(name.clone(), amount(units(*total).saturating_sub(used)));
        }
        out
    }

    /// Positions of the GPUs of the requested accelerator type (all of
    /// them when none is asked for).
    fn eligible_gpus(&self, req: &ResourceRequest) -> Result<Vec<usize>, Shortage> {
        let Some(t) = &req.accelerator_type else {
            return Ok((0..self.node.gpus.len()).collect());
        };
        if !self.node.accelerator_types().contains(t) {
            return Err(Shortage {
                resource: format!("accelerator_type:{t}"),
                requested: 0.001,
                available: 0.0,
                total: 0.0,
            });
        }
        Ok(self
            .node
            .gpus
            .iter()
            .enumerate()
            .filter(|(_, g)| g.accelerator_type.as_ref() == Some(t) || g.accelerator_type.is_none())
            .map(|(i, _)| i)
            .collect())
    }

    /// GPUs (positions) and shares for the request.
    fn pick_gpus(
        &self,
        req: &ResourceRequest,
        eligible: &[usize],
    ) -> Result<Vec<(u32, u64)>, Shortage> {
        let want = units(req.num_gpus);
        if want == 0 {
            return Ok(Vec::new());
        }
        let one = UNIT as u64;
        let total = amount(eligible.len() as u64 * one);
        let free_total: u64 = eligible
            .iter()
            .map(|&i| one.saturating_sub(self.gpu_used[i]))
            .sum();
        let short = || Shortage {
            resource: "GPU".into(),
            requested: req.num_gpus,
            available: amount(free_total),
            total,
        };
        if want < one {
            let best = eligible
                .iter()
                .copied()
                .filter(|&i| self.gpu_used[i] + want <= one)
                .max_by_key(|&i| (self.gpu_used[i], std::cmp::Reverse(i)));
            return best.map(|i| vec![(i as u32, want)]).ok_or_else(short);
        }
        let whole = (want / one) as usize;
        let free: Vec<usize> = eligible
            .iter()
            .copied()
            .filter(|&i| self.gpu_used[i] == 0)
            .take(whole)
            .collect();
        if free.len() < whole {
            return Err(short());
        }
        Ok(free.into_iter().map(|i| (i as u32, one)).collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::resources::{Gpu, NodeResources};

    fn node(cpus: f64, gpus: usize) -> NodeResources {
        NodeResources {
            cpus,
            memory_bytes: 8e9,
            gpus: (0..gpus as u32)
                .map(|index| Gpu {
                    index,
                    name: "NVIDIA L4".into(),
                    memory_bytes: Some(24 << 30),
                    accelerator_type: Some("L4".into()),
                })
                .collect(),
            custom: BTreeMap::new(),
        }
    }

    fn gpu(share: f64) -> ResourceRequest {
        ResourceRequest {
            num_cpus: 1.0,
            num_gpus: share,
            ..Default::default()
        }
    }

    #[test]
    fn two_half_gpus_share_one_device_and_a_third_waits() {
        let mut a = Allocator::new(node(8.0, 1));
        let x = a.allocate(&gpu(0.5)).unwrap();
        let y = a.allocate(&gpu(0.5)).unwrap();
        assert_eq!(x.cuda_visible_devices(), "0");
        assert_eq!(y.cuda_visible_devices(), "0");
        assert_eq!(x.gpu_memory_fraction(), Some(0.5));
        let short = a.allocate(&gpu(0.5)).unwrap_err();
        assert_eq!(short.resource, "GPU");
        assert_eq!((short.available, short.total), (0.0, 1.0));
        a.release(&x);
        let z = a.allocate(&gpu(0.5)).unwrap();
        assert_eq!(z.cuda_visible_devices(), "0");
    }

    #[test]
    fn fractions_pack_onto_the_fullest_gpu_and_whole_gpus_stay_free() {
        let mut a = Allocator::new(node(16.0, 2));
        let _x = a.allocate(&gpu(0.3)).unwrap();
        let y = a.allocate(&gpu(0.3)).unwrap();
        assert_eq!(y.cuda_visible_devices(), "0");
        let whole = a.allocate(&gpu(1.0)).unwrap();
        assert_eq!(whole.cuda_visible_devices(), "1");
        assert_eq!(a.allocate(&gpu(1.0)).unwrap_err().resource, "GPU");
        // 0.1 + 0.3 + 0.3 add up exactly (no float drift).
        let third = a.allocate(&gpu(0.4)).unwrap();
        assert_eq!(third.cuda_visible_devices(), "0");
        assert_eq!(a.available()["GPU"], 0.0);
    }

    #[test]
    fn cpus_memory_custom_and_accelerator_types_are_checked() {
        let mut a = Allocator::new(node(2.0, 1).with(&crate::resources::Overrides {
            resources: [("disk".to_string(), 1.0)].into(),
            ..Default::default()
        }));
        let half = ResourceRequest {
            num_cpus: 0.5,
            ..Default::default()
        };
        let h = a.allocate(&half).unwrap();
        assert_eq!(h.threads(), 1);
        a.allocate(&gpu(0.0)).unwrap();
        let e = a.allocate(&gpu(0.0)).unwrap_err();
        assert_eq!((e.resource.as_str(), e.available), ("CPU", 0.5));
        a.release(&h);
        let mem = ResourceRequest {
            memory_bytes: 9e9,
            ..Default::default()
        };
        assert_eq!(a.allocate(&mem).unwrap_err().resource, "memory");
        let disk = ResourceRequest {
            num_cpus: 0.0,
            resources: [("disk".to_string(), 1.0)].into(),
            ..Default::default()
        };
        a.allocate(&disk).unwrap();
        assert_eq!(a.allocate(&disk).unwrap_err().resource, "disk");
        let h100 = ResourceRequest {
            num_cpus: 0.0,
            num_gpus: 1.0,
            accelerator_type: Some("H100".into()),
            ..Default::default()
        };
        let e = a.allocate(&h100).unwrap_err();
        assert_eq!(e.to_string(), "this node has no accelerator_type:H100");
        let l4 = ResourceRequest {
            accelerator_type: Some("L4".into()),
            ..h100
        };
        assert_eq!(a.allocate(&l4).unwrap().cuda_visible_devices(), "0");
    }
}
