//! Command-line syntax.

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "llm-serve",
    version,
    about = "A GPU-first LLM inference server with a Serve-style control plane"
)]
pub struct Cli {
    /// Log level when RUST_LOG is not set (error, warn, info, debug, trace).
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate text from a prompt or a chat message, offline (no server).
    Generate(GenerateArgs),
    /// Measure prompt processing and generation speed of a model (one
    /// sequence, fixed token ids), like llama.cpp's llama-bench.
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// A GGUF file, a Hugging Face model directory, or a hub id.
    #[arg(long)]
    pub model: String,
    /// Prompt tokens processed in one forward pass.
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Tokens generated one at a time after the prompt.
    #[arg(long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// Measured repetitions (mean and deviation are reported; one warm-up
    /// round runs first).
    #[arg(long, default_value_t = 3)]
    pub repetitions: usize,
    /// Compute threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// A GGUF file, a Hugging Face model directory, or a hub id (org/name,
    /// org/name/file.gguf).
    #[arg(long)]
    pub model: String,
    /// Raw prompt text (no chat template).
    #[arg(long, conflicts_with = "chat", required_unless_present = "chat")]
    pub prompt: Option<String>,
    /// A user message, rendered with the model's chat template.
    #[arg(long)]
    pub chat: Option<String>,
    /// A system message to go before --chat.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// 0 samples greedily.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// 0 or -1 disables.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub top_k: i32,
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub presence_penalty: f32,
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub frequency_penalty: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    #[arg(long)]
    pub seed: Option<u64>,
    /// A stop string (repeat for several).
    #[arg(long)]
    pub stop: Vec<String>,
    /// A token id that ends generation (repeat for several).
    #[arg(long)]
    pub stop_token_ids: Vec<u32>,
    #[arg(long, default_value_t = 0)]
    pub min_tokens: usize,
    #[arg(long)]
    pub ignore_eos: bool,
    /// Keep special tokens in the output text.
    #[arg(long)]
    pub no_skip_special_tokens: bool,
    /// Print each token's logprob and this many alternatives to stderr.
    #[arg(long)]
    pub logprobs: Option<usize>,
    /// Context length to allow (default: the model's).
    #[arg(long)]
    pub max_model_len: Option<usize>,
    /// Compute threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}
