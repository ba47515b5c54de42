//! The CUDA backend's device layer (the `cuda` feature): finding and
//! opening an NVIDIA device through the driver library loaded at run time,
//! so a binary built on a machine without a CUDA toolkit starts anywhere,
//! and says plainly when there is no driver or no device. Model kernels
//! (NVRTC-compiled at start-up) build on this.

use crate::{Error, Result};
use cudarc::driver::CudaContext;
use std::sync::Arc;

/// What the driver reports of one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaDeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub total_memory_bytes: usize,
    /// (major, minor), e.g. (9, 0) for an H100/H200.
    pub compute_capability: (i32, i32),
}

impl std::fmt::Display for CudaDeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CUDA device {} ({}, {:.1} GiB, compute capability {}.{})",
            self.ordinal,
            self.name,
            self.total_memory_bytes as f64 / (1u64 << 30) as f64,
            self.compute_capability.0,
            self.compute_capability.1
        )
    }
}

fn driver_err(what: &str) -> impl FnOnce(cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error::Invalid(format!("CUDA: {what}: {e}"))
}

/// Whether the NVIDIA driver library (libcuda) can be loaded here.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library by its known names;
    // no CUDA call is made.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Opens device `ordinal` (after `CUDA_VISIBLE_DEVICES`).
pub fn open(ordinal: usize) -> Result<Arc<CudaContext>> {
    if !driver_present() {
        return Err(Error::Invalid(
            "CUDA: the NVIDIA driver library (libcuda.so.1) is not installed on this machine"
                .into(),
        ));
    }
    let count = CudaContext::device_count().map_err(driver_err("counting devices"))?;
    if ordinal >= count.max(0) as usize {
        return Err(Error::Invalid(format!(
            "CUDA: device {ordinal} does not exist ({count} visible; check CUDA_VISIBLE_DEVICES)"
        )));
    }
    CudaContext::new(ordinal).map_err(driver_err("opening the device"))
}

/// Opens device `ordinal` and reads what it is.
pub fn probe(ordinal: usize) -> Result<CudaDeviceInfo> {
    let ctx = open(ordinal)?;
    Ok(CudaDeviceInfo {
        ordinal,
        name: ctx.name().map_err(driver_err("reading the device name"))?,
        total_memory_bytes: ctx
            .total_mem()
            .map_err(driver_err("reading the device memory"))?,
        compute_capability: ctx
            .compute_capability()
            .map_err(driver_err("reading the compute capability"))?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Without a driver (CI), opening a device is a plain error, not a
    /// panic; with one, device 0 describes itself.
    #[test]
    fn probing_never_panics() {
        match probe(0) {
            Ok(info) => assert!(info.total_memory_bytes > 0, "{info}"),
            Err(e) => assert!(e.to_string().starts_with("CUDA: "), "{e}"),
        }
        assert!(probe(usize::MAX).is_err());
    }
}
