//! The models crate's error type: every failure names the file, tensor or
//! field involved.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid {what}: {detail}")]
    Format {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error("model source {0:?} not found: it is neither a local file or directory nor a Hugging Face repo id (org/name)")]
    SourceNotFound(String),
    #[error("{dir}: missing {file}")]
    MissingFile { dir: PathBuf, file: String },
    #[error("Hugging Face repo {repo}: {files} not in the local cache and could not be downloaded ({reason})")]
    Hub {
        repo: String,
        files: String,
        reason: String,
    },
    #[error("{path}: tensor {name}: {detail}")]
    Tensor {
        path: PathBuf,
        name: String,
        detail: String,
    },
    #[error("{path}: config field {field}: {detail}")]
    Config {
        path: PathBuf,
        field: String,
        detail: String,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("Unable to find LoRA adapter config file \"adapter_config.json\" in folder {0}. Check that the file exists and that you have read permissions.")]
    AdapterNotFound(PathBuf),
    #[error("LoRA adapter at {path}: {detail}")]
    Adapter { path: PathBuf, detail: String },
    #[error("invalid batch: {0}")]
    Batch(String),
    #[error(transparent)]
    Kernel(#[from] llm_serve_kernels::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ModelError>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ModelError {
    let path = path.into();
    move |source| ModelError::Io { path, source }
}
