//! Which device a model runs on. The CPU is always there; a CUDA device
//! can be named only in a build with the `cuda` feature.

use crate::error::{ModelError, Result};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    #[default]
    Cpu,
    /// A CUDA device by ordinal (after `CUDA_VISIBLE_DEVICES`).
    #[cfg(feature = "cuda")]
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = ModelError;

    /// `cpu`, `cuda` (device 0) or `cuda:N`.
    fn from_str(s: &str) -> Result<Self> {
        let cuda_ordinal = match s {
            "cpu" => return Ok(Device::Cpu),
            "cuda" => Some(0),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok()),
        };
        match cuda_ordinal {
            #[cfg(feature = "cuda")]
            Some(n) => Ok(Device::Cuda(n)),
            #[cfg(not(feature = "cuda"))]
            Some(_) => Err(ModelError::Unsupported(format!(
                "device '{s}': this build of llm-serve has no CUDA support (build with --features cuda)"
            ))),
            None => Err(ModelError::Unsupported(format!(
                "unknown device '{s}' (expected 'cpu', 'cuda' or 'cuda:N')"
            ))),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            #[cfg(feature = "cuda")]
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_parse() {
        assert_eq!("cpu".parse::<Device>().ok(), Some(Device::Cpu));
        assert!("tpu".parse::<Device>().is_err());
        #[cfg(not(feature = "cuda"))]
        assert!("cuda:1"
            .parse::<Device>()
            .is_err_and(|e| e.to_string().contains("--features cuda")));
        #[cfg(feature = "cuda")]
        assert_eq!("cuda:1".parse::<Device>().ok(), Some(Device::Cuda(1)));
    }
}
