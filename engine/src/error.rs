//! The engine crate's error type.

/// Errors from the engine: bad requests (which the API layer turns into
/// 400s, naming the parameter) and failures of the model or its files.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A request parameter is out of range or inconsistent.
    #[error("{message}")]
    InvalidParam {
        param: &'static str,
        message: String,
    },
    /// The prompt cannot be served (too long for the context, empty, ...).
    #[error("{message}")]
    InvalidPrompt {
        param: &'static str,
        message: String,
    },
    /// A structured-output constraint that does not compile; `param` is
    /// the request field it came from (`response_format`, `tools[0]`, ...).
    #[error("{message}")]
    InvalidConstraint { param: String, message: String },
    /// A LoRA adapter that does not exist where it was looked for.
    #[error("{message}")]
    AdapterNotFound { name: String, message: String },
    /// A LoRA adapter that exists but cannot be served (bad files, wrong
    /// shapes, a rank above max_lora_rank, a failed download, ...).
    #[error("{message}")]
    AdapterLoad { name: String, message: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    /// The engine itself failed (its thread is gone, ...).
    #[error("engine: {0}")]
    Internal(String),
    #[error(transparent)]
    Model(#[from] llm_serve_models::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, EngineError>;

pub(crate) fn invalid(param: &'static str, message: impl Into<String>) -> EngineError {
    EngineError::InvalidParam {
        param,
        message: message.into(),
    }
}
