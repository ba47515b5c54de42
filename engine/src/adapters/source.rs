//! Where an adapter's files are: a local directory (a path or a `file://`
//! URI) or a remote object-store prefix, and the adapter names that may be
//! joined onto a loading path.

use crate::error::{EngineError, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The URI schemes of remote adapter sources.
const REMOTE_SCHEMES: [&str; 8] = [
    "s3://", "gs://", "gcs://", "az://", "azure://", "abfs://", "abfss://", "https://",
];

/// Why a remote source is refused (downloads are not built yet).
pub const REMOTE_NOT_YET: &str = "remote LoRA adapter sources (s3://, gs://, az://, abfss://, http(s)://) are not supported yet; copy the adapter into a local directory";

/// An adapter's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdapterLocation {
    Local(PathBuf),
    /// A remote prefix (`s3://bucket/path`, ...), without a trailing `/`.
    Remote(String),
}

/// Adapter names are joined onto the loading path, so they are one path
/// component: not empty, no `/` or `\`, not `.` or `..`, no control
/// characters (colons are fine: Ray's ids may hold them).
pub fn check_adapter_name(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.len() > 255
        || name == "."
        || name == ".."
        || name.contains(['/', '\\'])
        || name.chars().any(char::is_control);
    if bad {
        return Err(EngineError::AdapterLoad {
            name: name.to_string(),
            message: format!(
                "{name:?} is not a valid LoRA adapter name: it must be one path component (no '/', '\\\\', '.' or '..', at most 255 bytes)"
            ),
        });
    }
    Ok(())
}

impl AdapterLocation {
    /// A local path, `file://` URI, or remote URI.
    pub fn parse(source: &str) -> Result<Self> {
        let source = source.trim();
        if source.is_empty() {
            return Err(EngineError::AdapterLoad {
                name: String::new(),
                message: "an empty adapter source".into(),
            });
        }
        if let Some(path) = source.strip_prefix("file://") {
            return Ok(AdapterLocation::Local(PathBuf::from(path)));
        }
        if REMOTE_SCHEMES.iter().any(|s| source.starts_with(s)) || source.starts_with("http://") {
            return Ok(AdapterLocation::Remote(
                source.trim_end_matches('/').to_string(),
            ));
        }
        if let Some((scheme, _)) = source.split_once("://") {
            return Err(EngineError::AdapterLoad {
                name: String::new(),
                message: format!(
                    "adapter source {source:?}: the scheme {scheme}:// is not supported (local paths, file://, s3://, gs://, az://, abfss://, http(s)://)"
                ),
            });
        }
        Ok(AdapterLocation::Local(PathBuf::from(source)))
    }

    /// The location of adapter `name` under this one.
    pub fn join(&self, name: &str) -> Result<Self> {
        check_adapter_name(name)?;
        Ok(match self {
            AdapterLocation::Local(p) => AdapterLocation::Local(p.join(name)),
            AdapterLocation::Remote(u) => AdapterLocation::Remote(format!("{u}/{name}")),
        })
    }

    /// A local directory holding the adapter's files: the directory
    /// itself, or the download of a remote one into `cache_dir`.
    pub async fn fetch(
        &self,
        name: &str,
        cache_dir: &Path,
        timeout: Option<Duration>,
        tries: u32,
    ) -> Result<PathBuf> {
        match self {
            AdapterLocation::Local(p) => Ok(p.clone()),
            AdapterLocation::Remote(uri) => {
                let _ = (cache_dir, timeout, tries);
                Err(EngineError::AdapterLoad {
                    name: name.to_string(),
                    message: format!("{uri}: {REMOTE_NOT_YET}"),
                })
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_and_join() {
        assert_eq!(
            AdapterLocation::parse("/a/b").unwrap().join("x:y").unwrap(),
            AdapterLocation::Local(PathBuf::from("/a/b/x:y"))
        );
        assert_eq!(
            AdapterLocation::parse("file:///a/b/").unwrap(),
            AdapterLocation::Local(PathBuf::from("/a/b/"))
        );
        assert_eq!(
            AdapterLocation::parse("s3://bucket/loras/")
                .unwrap()
                .join("a")
                .unwrap(),
            AdapterLocation::Remote("s3://bucket/loras/a".into())
        );
        assert!(AdapterLocation::parse("ftp://x").is_err());
        assert!(AdapterLocation::parse(" ").is_err());
        for bad in ["", ".", "..", "a/b", "..\\x", "a\nb"] {
            assert!(check_adapter_name(bad).is_err(), "{bad:?}");
        }
        check_adapter_name("my_suffix:aBc1234").unwrap();
    }
}
