//! Reading weights out of (possibly sharded) safetensors files in f32, f16
//! or bf16.

use crate::error::{io_err, ModelError, Result};
use llm_serve_kernels::{QMatrix, WeightType};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub struct SafetensorsStore {
    shards: Vec<(PathBuf, Mmap)>,
    /// Each tensor's shard, dtype, shape and bytes within the shard, read
    /// from the headers once (a header lists every tensor of its shard).
    index: HashMap<String, Entry>,
}

struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: std::ops::Range<usize>,
}

impl SafetensorsStore {
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let file = std::fs::File::open(path).map_err(io_err(path))?;
            // SAFETY: read-only mapping of an immutable model file.
            let map = unsafe { Mmap::map(&file) }.map_err(io_err(path))?;
            let st = SafeTensors::deserialize(&map).map_err(|e| ModelError::Format {
                path: path.clone(),
                what: "safetensors file",
                detail: e.to_string(),
            })?;
            let base = map.as_ptr() as usize;
            for (name, view) in st.tensors() {
                let start = view.data().as_ptr() as usize - base;
                index.insert(
                    name,
                    Entry {
                        shard: i,
                        dtype: view.dtype(),
                        shape: view.shape().to_vec(),
                        bytes: start..start + view.data().len(),
                    },
                );
            }
            drop(st);
            shards.push((path.clone(), map));
        }
        Ok(SafetensorsStore { shards, index })
    }

    /// Every tensor name, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    pub fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn first_path(&self) -> &Path {
        self.shards
            .first()
            .map(|s| s.0.as_path())
            .unwrap_or(Path::new(""))
    }

    fn tensor(&self, name: &str) -> Result<(&Path, WeightType, Vec<usize>, &[u8])> {
        let entry = self.index.get(name).ok_or_else(|| ModelError::Tensor {
            path: self.first_path().to_path_buf(),
            name: name.to_string(),
            detail: "missing from the checkpoint".into(),
        })?;
        let (path, map) = &self.shards[entry.shard];
        let err = |detail: String| ModelError::Tensor {
            path: path.clone(),
            name: name.to_string(),
            detail,
        };
        let wtype = match entry.dtype {
            Dtype::F32 => WeightType::F32,
            Dtype::F16 => WeightType::F16,
            Dtype::BF16 => WeightType::BF16,
            other => {
                return Err(err(format!(
                    "dtype {other:?} is not supported (f32, f16, bf16 are)"
                )))
            }
        };
        let data = map
            .get(entry.bytes.clone())
            .ok_or_else(|| err("its bytes lie outside the file".into()))?;
        Ok((path, wtype, entry.shape.clone(), data))
    }

    /// A tensor's type, shape and raw little-endian bytes.
    pub fn raw(&self, name: &str) -> Result<(WeightType, Vec<usize>, &[u8])> {
        self.tensor(name).map(|(_, w, d, b)| (w, d, b))
    }

    pub fn matrix(&self, name: &str) -> Result<QMatrix> {
        let (path, wtype, dims, bytes) = self.tensor(name)?;
        let err = |detail: String| ModelError::Tensor {
            path: path.to_path_buf(),
            name: name.to_string(),
            detail,
        };
        if dims.len() != 2 {
            return Err(err(format!("expected 2 dimensions, found {dims:?}")));
        }
        QMatrix::from_bytes(wtype, dims[0], dims[1], bytes).map_err(|e| err(e.to_string()))
    }

    pub fn vector(&self, name: &str) -> Result<Vec<f32>> {
        let (path, wtype, dims, bytes) = self.tensor(name)?;
        if dims.len() != 1 {
            return Err(ModelError::Tensor {
                path: path.to_path_buf(),
                name: name.to_string(),
                detail: format!("expected 1 dimension, found {dims:?}"),
            });
        }
        let m = QMatrix::from_bytes(wtype, 1, dims[0], bytes)?;
        Ok(m.to_f32())
    }
}
