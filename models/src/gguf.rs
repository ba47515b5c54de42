//! Reading weights out of a GGUF file (memory-mapped; quantized blocks are
//! copied as they are into the kernels' matrices).

use crate::error::{io_err, ModelError, Result};
use candle_core::quantized::gguf_file;
use llm_serve_kernels::{QMatrix, WeightType};
use memmap2::Mmap;
use std::path::{Path, PathBuf};

pub struct GgufFile {
    path: PathBuf,
    pub content: gguf_file::Content,
    map: Mmap,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = std::fs::File::open(path).map_err(io_err(path))?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| ModelError::Format {
            path: path.to_path_buf(),
            what: "GGUF file",
            detail: e.to_string(),
        })?;
        // SAFETY: the file is opened read-only and not modified while mapped
        // (model files are immutable inputs).
        let map = unsafe { Mmap::map(&file) }.map_err(io_err(path))?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            content,
            map,
        })
    }

    pub fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn tensor_err(&self, name: &str, detail: impl Into<String>) -> ModelError {
        ModelError::Tensor {
            path: self.path.clone(),
            name: name.to_string(),
            detail: detail.into(),
        }
    }

    /// The tensor's type, dims (outermost first) and raw bytes.
    fn raw(&self, name: &str) -> Result<(WeightType, Vec<usize>, &[u8])> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| self.tensor_err(name, "missing from the file"))?;
        let wtype = WeightType::from_ggml(info.ggml_dtype)
            .map_err(|e| self.tensor_err(name, e.to_string()))?;
        let dims = info.shape.dims().to_vec();
        let elems: usize = dims.iter().product();
        if !elems.is_multiple_of(wtype.block_elems()) {
            return Err(self.tensor_err(
                name,
                format!("{elems} elements are not whole {wtype} blocks"),
            ));
        }
        let len = elems / wtype.block_elems() * wtype.block_bytes();
        let start = self.content.tensor_data_offset as usize + info.offset as usize;
        let bytes = self.map.get(start..start + len).ok_or_else(|| {
            self.tensor_err(
                name,
                format!(
                    "data at bytes {start}..{} lies beyond the end of the file ({} bytes): the file is truncated or corrupt",
                    start + len,
                    self.map.len()
                ),
            )
        })?;
        Ok((wtype, dims, bytes))
    }

    /// A 2-D weight as `rows (out) x cols (in)`.
    pub fn matrix(&self, name: &str) -> Result<QMatrix> {
        let (wtype, dims, bytes) = self.raw(name)?;
        if dims.len() != 2 {
            return Err(self.tensor_err(name, format!("expected 2 dimensions, found {dims:?}")));
        }
        QMatrix::from_bytes(wtype, dims[0], dims[1], bytes)
            .map_err(|e| self.tensor_err(name, e.to_string()))
    }

    /// A 1-D tensor (norm weights, biases) as f32.
    pub fn vector(&self, name: &str) -> Result<Vec<f32>> {
        let (wtype, dims, bytes) = self.raw(name)?;
        if dims.len() != 1 {
            return Err(self.tensor_err(name, format!("expected 1 dimension, found {dims:?}")));
        }
        let m = QMatrix::from_bytes(wtype, 1, dims[0], bytes)
            .map_err(|e| self.tensor_err(name, e.to_string()))?;
        Ok(m.to_f32())
    }
}
