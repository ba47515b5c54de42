//! Where a model's files come from: a local GGUF file, a local Hugging Face
//! directory, or a Hugging Face hub repo id resolved through hf-hub's cache
//! (offline when the cache has the files).

use crate::error::{io_err, ModelError, Result};
use std::path::{Path, PathBuf};

/// What the user named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// A local GGUF file or Hugging Face model directory.
    Path(PathBuf),
    /// `org/name`, optionally `org/name/file.gguf`, optionally `@revision`.
    Hub {
        repo: String,
        file: Option<String>,
        revision: Option<String>,
    },
}

/// The file name of the default model (SmolLM2-135M-Instruct, Q4_1).
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Where models fetched by `scripts/fetch-default-model.sh` live:
/// `$LLM_SERVE_MODELS_DIR`, else `~/.cache/llm-serve/models`.
pub fn models_dir() -> PathBuf {
    match std::env::var("LLM_SERVE_MODELS_DIR") {
        Ok(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| ".".into()))
            .join(".cache/llm-serve/models"),
    }
}

/// The default model's GGUF path (whether or not it has been fetched).
pub fn default_model_path() -> PathBuf {
    models_dir().join(DEFAULT_MODEL_FILE)
}

impl ModelSource {
    /// Local paths win over hub ids when both could match; `default` names
    /// the default model.
    pub fn parse(s: &str) -> Result<Self> {
        if s == "default" {
            let p = default_model_path();
            if !p.is_file() {
                return Err(ModelError::MissingFile {
                    dir: models_dir(),
                    file: format!(
                        "{DEFAULT_MODEL_FILE} (the default model; fetch it with scripts/fetch-default-model.sh)"
                    ),
                });
            }
            return Ok(ModelSource::Path(p));
        }
        let path = Path::new(s);
        if path.exists() {
            return Ok(ModelSource::Path(path.to_path_buf()));
        }
        let (id, revision) = match s.split_once('@') {
            Some((id, rev)) if !rev.is_empty() => (id, Some(rev.to_string())),
            _ => (s, None),
        };
        let parts: Vec<&str> = id.split('/').collect();
        let valid = |p: &&str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if parts.len() == 2 && parts.iter().all(valid) {
            return Ok(ModelSource::Hub {
                repo: id.to_string(),
                file: None,
                revision,
            });
        }
        if parts.len() >= 3
            && parts[..2].iter().all(valid)
            && id.to_ascii_lowercase().ends_with(".gguf")
        {
            return Ok(ModelSource::Hub {
                repo: parts[..2].join("/"),
                file: Some(parts[2..].join("/")),
                revision,
            });
        }
        Err(ModelError::SourceNotFound(s.to_string()))
    }
}

/// The bytes of a model's weight files when they are on this machine at a
/// local path (a GGUF file, or a directory's `*.safetensors` / `*.gguf`);
/// `None` for a hub id or a path that is not there. Never downloads.
pub fn local_weights_bytes(source: &str) -> Option<u64> {
    let ModelSource::Path(p) = ModelSource::parse(source).ok()? else {
        return None;
    };
    if p.is_file() {
        return std::fs::metadata(&p).ok().map(|m| m.len());
    }
    let total = std::fs::read_dir(&p)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().to_ascii_lowercase();
            name.ends_with(".safetensors") || name.ends_with(".gguf")
        })
        .filter_map(|e| e.metadata().ok().map(|m| m.len()))
        .sum();
    Some(total)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightsFormat {
    Gguf,
    Safetensors,
}

/// The files of a resolved model.
#[derive(Clone, Debug)]
pub struct ModelFiles {
    /// How the user named it (for messages and the served model name).
    pub source: String,
    pub format: WeightsFormat,
    pub gguf: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub safetensors: Vec<PathBuf>,
    pub tokenizer_json: Option<PathBuf>,
    pub tokenizer_config: Option<PathBuf>,
    pub generation_config: Option<PathBuf>,
    pub chat_template: Option<PathBuf>,
}

impl ModelFiles {
    pub fn resolve(source: &str) -> Result<Self> {
        match ModelSource::parse(source)? {
            ModelSource::Path(p) => Self::local(source, &p),
            ModelSource::Hub {
                repo,
                file,
                revision,
            } => Self::hub(source, &repo, file.as_deref(), revision.as_deref()),
        }
    }

    fn empty(source: &str, format: WeightsFormat) -> Self {
        ModelFiles {
            source: source.to_string(),
            format,
            gguf: None,
            config: None,
            safetensors: Vec::new(),
            tokenizer_json: None,
            tokenizer_config: None,
            generation_config: None,
            chat_template: None,
        }
    }

    fn local(source: &str, path: &Path) -> Result<Self> {
        if path.is_file() {
            if !is_gguf(path)? {
                return Err(ModelError::Format {
                    path: path.to_path_buf(),
                    what: "GGUF file",
                    detail: "the file does not start with the GGUF magic; to load a Hugging Face model pass its directory".into(),
                });
            }
            let mut files = Self::empty(source, WeightsFormat::Gguf);
            files.gguf = Some(path.to_path_buf());
            if let Some(dir) = path.parent() {
                files.attach_tokenizer_files(dir);
            }
            return Ok(files);
        }
        let dir = path;
        let entries = std::fs::read_dir(dir).map_err(io_err(dir))?;
        let mut ggufs = Vec::new();
        for e in entries {
            let p = e.map_err(io_err(dir))?.path();
            if p.extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("gguf"))
            {
                ggufs.push(p);
            }
        }
        let config = dir.join("config.json");
        if !config.is_file() {
            if ggufs.len() == 1 {
                return Self::local(source, &ggufs[0]);
            }
            return Err(ModelError::MissingFile {
                dir: dir.to_path_buf(),
                file: if ggufs.is_empty() {
                    "config.json (a Hugging Face model directory needs config.json and *.safetensors)".into()
                } else {
                    format!(
                        "config.json; found {} GGUF files, name one of them directly",
                        ggufs.len()
                    )
                },
            });
        }
        let mut files = Self::empty(source, WeightsFormat::Safetensors);
        files.config = Some(config);
        files.safetensors = local_safetensors(dir)?;
        files.attach_tokenizer_files(dir);
        Ok(files)
    }

    fn attach_tokenizer_files(&mut self, dir: &Path) {
        let found = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
        self.tokenizer_json = found("tokenizer.json");
        self.tokenizer_config = found("tokenizer_config.json");
        self.generation_config = found("generation_config.json");
        self.chat_template = found("chat_template.jinja");
    }

    fn hub(source: &str, repo: &str, file: Option<&str>, revision: Option<&str>) -> Result<Self> {
        let hub = Hub::new(repo, revision);
        if let Some(file) = file {
            let path = hub.fetch(&[file])?.remove(0);
            let mut files = Self::empty(source, WeightsFormat::Gguf);
            files.gguf = Some(path);
            // Tokenizer files next to a GGUF in a repo are optional.
            files.tokenizer_json = hub.optional("tokenizer.json");
            files.tokenizer_config = hub.optional("tokenizer_config.json");
            files.generation_config = hub.optional("generation_config.json");
            return Ok(files);
        }
        let config = hub.fetch(&["config.json"])?.remove(0);
        let safetensors = match hub.optional("model.safetensors.index.json") {
            Some(index) => {
                let shards = shard_names(&index)?;
                let names: Vec<&str> = shards.iter().map(String::as_str).collect();
                hub.fetch(&names)?
            }
            None => hub.fetch(&["model.safetensors"]).map_err(|e| match e {
                ModelError::Hub { repo, reason, .. } => ModelError::Hub {
                    repo,
                    files: "model.safetensors (or model.safetensors.index.json and its shards)"
                        .into(),
                    reason,
                },
                other => other,
            })?,
        };
        let mut files = Self::empty(source, WeightsFormat::Safetensors);
        files.config = Some(config);
        files.safetensors = safetensors;
        files.tokenizer_json = hub.optional("tokenizer.json");
        files.tokenizer_config = hub.optional("tokenizer_config.json");
        files.generation_config = hub.optional("generation_config.json");
        files.chat_template = hub.optional("chat_template.jinja");
        Ok(files)
    }

    /// The directory holding the weights (for messages).
    pub fn weights_path(&self) -> PathBuf {
        match (&self.gguf, self.safetensors.first()) {
            (Some(g), _) => g.clone(),
            (None, Some(s)) => s.parent().map(Path::to_path_buf).unwrap_or_default(),
            (None, None) => PathBuf::from(&self.source),
        }
    }
}

fn is_gguf(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut magic = [0u8; 4];
    match f.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == b"GGUF"),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// The safetensors files of a local directory: the index's shards, or
/// `model.safetensors`, or every `*.safetensors`.
fn local_safetensors(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let shards = shard_names(&index)?;
        let mut out = Vec::new();
        for s in shards {
            let p = dir.join(&s);
            if !p.is_file() {
                return Err(ModelError::MissingFile {
                    dir: dir.to_path_buf(),
                    file: format!("{s} (listed in model.safetensors.index.json)"),
                });
            }
            out.push(p);
        }
        return Ok(out);
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    all.sort();
    if all.is_empty() {
        return Err(ModelError::MissingFile {
            dir: dir.to_path_buf(),
            file: "model.safetensors (or model.safetensors.index.json and its shards)".into(),
        });
    }
    Ok(all)
}

/// Distinct shard file names in an index's `weight_map`, sorted.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(io_err(index))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Format {
        path: index.to_path_buf(),
        what: "safetensors index",
        detail: e.to_string(),
    })?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ModelError::Format {
            path: index.to_path_buf(),
            what: "safetensors index",
            detail: "no `weight_map` object".into(),
        })?;
    let mut names: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// A hub repo seen through the local cache, downloading when allowed.
struct Hub {
    repo: String,
    revision: String,
    cache: hf_hub::Cache,
}

impl Hub {
    fn new(repo: &str, revision: Option<&str>) -> Self {
        let cache = match std::env::var("HF_HUB_CACHE") {
            Ok(dir) if !dir.is_empty() => hf_hub::Cache::new(dir.into()),
            _ => hf_hub::Cache::from_env(),
        };
        Hub {
            repo: repo.to_string(),
            revision: revision.unwrap_or("main").to_string(),
            cache,
        }
    }

    fn repo(&self) -> hf_hub::Repo {
        hf_hub::Repo::with_revision(
            self.repo.clone(),
            hf_hub::RepoType::Model,
            self.revision.clone(),
        )
    }

    fn cached(&self, file: &str) -> Option<PathBuf> {
        self.cache.repo(self.repo()).get(file)
    }

    fn offline() -> bool {
        std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0")
    }

    fn download(&self, file: &str) -> std::result::Result<PathBuf, String> {
        if Self::offline() {
            return Err("HF_HUB_OFFLINE is set".into());
        }
        let api = hf_hub::api::sync::ApiBuilder::from_cache(self.cache.clone())
            .with_progress(false)
            .build()
            .map_err(|e| e.to_string())?;
        api.repo(self.repo()).get(file).map_err(|e| e.to_string())
    }

    /// All of `files`, or an error naming the ones that could not be had.
    fn fetch(&self, files: &[&str]) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let mut missing = Vec::new();
        let mut reason = String::new();
        for f in files {
            match self.cached(f) {
                Some(p) => out.push(p),
                None => match self.download(f) {
                    Ok(p) => out.push(p),
                    Err(e) => {
                        missing.push(*f);
                        reason = e;
                    }
                },
            }
        }
        if missing.is_empty() {
            Ok(out)
        } else {
            Err(ModelError::Hub {
                repo: self.repo.clone(),
                files: missing.join(", "),
                reason,
            })
        }
    }

    fn optional(&self, file: &str) -> Option<PathBuf> {
        self.cached(file).or_else(|| self.download(file).ok())
    }
}
