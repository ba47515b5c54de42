//! The node's resources and their allocation to replicas, as Ray
//! schedules actors: CPUs, memory, GPUs (fractions of one GPU allowed, so
//! two `num_gpus: 0.5` replicas share a device) and custom resources.

mod allocator;
mod inventory;
mod replica_memory;

pub use allocator::{Allocation, Allocator, ResourceRequest, Shortage};
#[cfg(test)]
pub use inventory::Gpu;
pub use inventory::{NodeResources, Overrides};
pub use replica_memory::{replica_memory, MemoryAsk, ReplicaMemory};
