//! Memory-mapped safetensors files, single or sharded.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::{DType, Device, Error, Result, Tensor};

/// Where one tensor's bytes are.
#[derive(Clone, Debug)]
pub struct TensorEntry {
    /// Index of the file in [`WeightStore::files`].
    pub file: usize,
    /// The dtype as stored in the file.
    pub dtype: safetensors::Dtype,
    /// The shape as stored in the file.
    pub shape: Vec<usize>,
    /// Absolute byte range inside the file.
    pub range: std::ops::Range<usize>,
}

struct Mapped {
    path: PathBuf,
    map: Mmap,
}

/// A set of memory-mapped safetensors files seen as one name → tensor map.
pub struct WeightStore {
    files: Vec<Mapped>,
    tensors: BTreeMap<String, TensorEntry>,
}

impl std::fmt::Debug for WeightStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WeightStore({} files, {} tensors)", self.files.len(), self.tensors.len())
    }
}

impl WeightStore {
    /// Opens a `.safetensors` file, a sharded checkpoint's `*.safetensors.index.json`, or a
    /// list of such files. Every header is validated up front (offsets in range, contiguous,
    /// not overlapping, sizes matching dtype × shape); any problem is an error naming the file.
    pub fn open(paths: &[impl AsRef<Path>]) -> Result<Arc<WeightStore>> {
        Self::open_unshared(paths).map(Arc::new)
    }

    /// An original Stability checkpoint (`stage_a/b/c*.safetensors`) seen under diffusers' names
    /// (spec §6.3): each packed attention `in_proj_weight [3C, C]` / `in_proj_bias [3C]` becomes
    /// `to_q`, `to_k`, `to_v` (row thirds: contiguous byte ranges, no copy), `attn.out_proj`
    /// becomes `to_out.0`, Stage B's `clip_mapper` becomes `clip_txt_pooled_mapper`, and Stage A's
    /// `vquantizer.codebook` becomes `vquantizer.embedding`.
    pub fn open_original(paths: &[impl AsRef<Path>]) -> Result<Arc<WeightStore>> {
        let mut store = Self::open_unshared(paths)?;
        store.rename_original();
        Ok(Arc::new(store))
    }

    fn rename_original(&mut self) {
        let names: Vec<String> = self.tensors.keys().cloned().collect();
        for name in names {
            let e = self.tensors[&name].clone();
            if let Some(base) =
                name.strip_suffix(".attention.attn.in_proj_weight").or_else(|| name.strip_suffix(".attention.attn.in_proj_bias"))
            {
                let is_weight = name.ends_with("weight");
                let rows = e.shape[0] / 3;
                let row_bytes = (e.range.end - e.range.start) / 3;
                if e.shape[0] % 3 != 0 {
                    continue; // not a packed projection; leave it to be reported as unused
                }
                self.tensors.remove(&name);
                for (i, which) in ["to_q", "to_k", "to_v"].iter().enumerate() {
                    let mut shape = e.shape.clone();
                    shape[0] = rows;
                    let start = e.range.start + i * row_bytes;
                    let new = format!("{base}.attention.{which}.{}", if is_weight { "weight" } else { "bias" });
                    self.tensors.insert(new, TensorEntry { shape, range: start..start + row_bytes, ..e.clone() });
                }
                continue;
            }
            let renamed = if let Some(base) = name.strip_suffix(".attention.attn.out_proj.weight") {
                Some(format!("{base}.attention.to_out.0.weight"))
            } else if let Some(base) = name.strip_suffix(".attention.attn.out_proj.bias") {
                Some(format!("{base}.attention.to_out.0.bias"))
            } else if let Some(rest) = name.strip_prefix("clip_mapper.") {
                Some(format!("clip_txt_pooled_mapper.{rest}"))
            } else {
                name.strip_prefix("vquantizer.codebook.").map(|rest| format!("vquantizer.embedding.{rest}"))
            };
            if let Some(new) = renamed {
                self.tensors.remove(&name);
                self.tensors.insert(new, e);
            }
        }
    }

    fn open_unshared(paths: &[impl AsRef<Path>]) -> Result<WeightStore> {
        let mut files = Vec::new();
        for p in paths {
            let p = p.as_ref();
            if p.to_string_lossy().ends_with(".index.json") {
                files.extend(shards_of_index(p)?);
            } else {
                files.push(p.to_path_buf());
            }
        }
        if files.is_empty() {
            return Err(Error::Weights("no safetensors files given".into()));
        }
        let mut store = WeightStore { files: Vec::new(), tensors: BTreeMap::new() };
        for path in files {
            store.add_file(&path)?;
        }
        Ok(store)
    }

    fn add_file(&mut self, path: &Path) -> Result<()> {
        let file = File::open(path).map_err(|e| Error::file(path, format!("cannot open: {e}")))?;
        // SAFETY: the mapping is read-only; the files are weights nobody writes while the
        // engine runs (a file truncated under us would fault, as for any mmap reader).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::file(path, format!("cannot memory-map: {e}")))?;
        let (header_len, meta) = safetensors::SafeTensors::read_metadata(&map[..])
            .map_err(|e| Error::file(path, format!("not a valid safetensors file: {}", describe(&e, map.len()))))?;
        let data_start = 8 + header_len;
        let data_len = map.len() - data_start;
        let idx = self.files.len();
        for (name, info) in meta.tensors() {
            // read_metadata has validated the offsets; this guard keeps the slicing below
            // provably in bounds whatever a future parser version does.
            let (s, e) = info.data_offsets;
            if s > e || e > data_len {
                return Err(Error::file(
                    path,
                    format!("truncated: tensor '{name}' ends at byte {e} of the data section, which has only {data_len} bytes"),
                ));
            }
            if self.tensors.contains_key(&name) {
                return Err(Error::file(
                    path,
                    format!("tensor '{name}' also appears in {}", self.files[self.tensors[&name].file].path.display()),
                ));
            }
            self.tensors.insert(
                name,
                TensorEntry { file: idx, dtype: info.dtype, shape: info.shape.clone(), range: data_start + s..data_start + e },
            );
        }
        self.files.push(Mapped { path: path.to_path_buf(), map });
        Ok(())
    }

    /// The files, in the order they were opened.
    pub fn files(&self) -> Vec<&Path> {
        self.files.iter().map(|f| f.path.as_path()).collect()
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|s| s.as_str())
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// True when no file holds any tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Where `name` is, if present.
    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.get(name)
    }

    /// The file that holds entry `e`.
    pub fn path_of(&self, e: &TensorEntry) -> &Path {
        &self.files[e.file].path
    }

    /// The raw little-endian bytes of `name`, straight from the mapping.
    pub fn bytes(&self, name: &str) -> Option<&[u8]> {
        self.tensors.get(name).map(|e| &self.files[e.file].map[e.range.clone()])
    }

    /// Loads `name` as `dtype` on `device`, converting as needed. On a GPU the bytes are
    /// copied from the mapping to device memory directly (no host copy of the file).
    pub fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let e = self.entry(name).ok_or_else(|| Error::Weights(format!("tensor '{name}' not found in {}", self.describe_files())))?;
        let src = DType::from_safetensors(e.dtype).ok_or_else(|| {
            Error::file(self.path_of(e), format!("tensor '{name}' has dtype {:?}; the engine loads only F32, BF16 and F16", e.dtype))
        })?;
        let bytes = &self.files[e.file].map[e.range.clone()];
        Tensor::from_le_bytes(bytes, src, &e.shape, dtype, device)
    }

    /// Loads an integer tensor (token ids, masks) stored as I64, I32, U8, BOOL or exact-integer
    /// floats, with its shape.
    pub fn load_integers(&self, name: &str) -> Result<(Vec<i64>, Vec<usize>)> {
        use safetensors::Dtype as D;
        let e = self.entry(name).ok_or_else(|| Error::Weights(format!("tensor '{name}' not found in {}", self.describe_files())))?;
        let bytes = &self.files[e.file].map[e.range.clone()];
        let v: Vec<i64> = match e.dtype {
            D::I64 => bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect(),
            D::I32 => bytes.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64).collect(),
            D::U8 | D::BOOL => bytes.iter().map(|&b| b as i64).collect(),
            d => match DType::from_safetensors(d) {
                Some(dt) => {
                    let f = crate::runtime::tensor::decode_le(bytes, dt);
                    if let Some(bad) = f.iter().find(|x| x.fract() != 0.0) {
                        return Err(Error::file(self.path_of(e), format!("tensor '{name}' should hold integers but has {bad}")));
                    }
                    f.iter().map(|&x| x as i64).collect()
                }
                None => return Err(Error::file(self.path_of(e), format!("tensor '{name}' has dtype {d:?}, not an integer type"))),
            },
        };
        Ok((v, e.shape.clone()))
    }

    /// Scans every floating-point tensor for NaN and ±Inf (reads all the data once; for
    /// `--check-weights`). The error names the tensor, the file and the first bad element.
    pub fn check_finite(&self) -> Result<()> {
        for (name, e) in &self.tensors {
            let Some(dtype) = DType::from_safetensors(e.dtype) else { continue };
            let bytes = &self.files[e.file].map[e.range.clone()];
            let v = crate::runtime::tensor::decode_le(bytes, dtype);
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::file(
                    self.path_of(e),
                    format!("tensor '{name}' holds {} at element {i}: the checkpoint is corrupt", v[i]),
                ));
            }
        }
        Ok(())
    }

    /// The file names, for messages.
    pub fn describe_files(&self) -> String {
        match self.files.len() {
            1 => self.files[0].path.display().to_string(),
            n => format!("{n} files ({} …)", self.files[0].path.display()),
        }
    }
}

/// Reads a `*.safetensors.index.json` (`{"weight_map": {tensor: shard}}`) and returns the
/// shard paths, deduplicated, in first-appearance order.
fn shards_of_index(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::file(index, format!("cannot read: {e}")))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::file(index, format!("invalid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::file(index, "no \"weight_map\" object: not a safetensors index"))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut seen = HashMap::new();
    let mut out = Vec::new();
    for (tensor, shard) in map {
        let shard = shard.as_str().ok_or_else(|| Error::file(index, format!("weight_map entry for '{tensor}' is not a file name")))?;
        if shard.contains('/') || shard.contains('\\') || shard == ".." {
            return Err(Error::file(index, format!("shard name '{shard}' must be a plain file name next to the index")));
        }
        if seen.insert(shard.to_string(), ()).is_none() {
            out.push(dir.join(shard));
        }
    }
    if out.is_empty() {
        return Err(Error::file(index, "the weight_map is empty"));
    }
    Ok(out)
}

/// A readable description of a safetensors parse error.
fn describe(e: &safetensors::SafeTensorError, file_len: usize) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooSmall => format!("file of {file_len} bytes is too small for the 8-byte header length"),
        E::HeaderTooLarge => "header length is implausibly large (corrupt header length)".into(),
        E::InvalidHeaderLength => format!("header length points past the end of the {file_len}-byte file (truncated or corrupt)"),
        E::InvalidHeader(_) => "header is not valid UTF-8".into(),
        E::InvalidHeaderStart => "header does not start with '{' (not a safetensors file)".into(),
        E::InvalidHeaderDeserialization(msg) => format!("header JSON is malformed or has an unknown dtype ({msg})"),
        E::InvalidOffset(name) => format!("tensor '{name}' has data offsets that are out of order, overlapping or leave gaps"),
        E::TensorInvalidInfo => "a tensor's byte length does not match its dtype and shape".into(),
        E::MetadataIncompleteBuffer => {
            "the data section's size does not match what the header describes (truncated file or trailing bytes)".into()
        }
        E::ValidationOverflow => "a tensor's shape overflows when multiplied out".into(),
        other => format!("{other}"),
    }
}
