//! The prefix builder: `vb.pp("down_blocks").pp(1).get("depthwise.weight", &[c, 1, 3, 3])`
//! reads `down_blocks.1.depthwise.weight`, checks its shape and converts its dtype; every
//! request is remembered so that [`VarBuilder::finish`] can list what was missing, wrongly
//! shaped, or never used.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use super::WeightStore;
use crate::{DType, Device, Error, Result, Tensor};

/// (name, wanted shape, shape in the file).
type ShapeMismatch = (String, Vec<usize>, Vec<usize>);

struct Shared {
    /// The files, or None for random weights (see [`VarBuilder::random`]).
    store: Option<Arc<WeightStore>>,
    seed: u64,
    dtype: DType,
    device: Device,
    used: Mutex<BTreeSet<String>>,
    missing: Mutex<BTreeSet<String>>,
    wrong_shape: Mutex<Vec<ShapeMismatch>>,
}

/// A view of a [`WeightStore`] under a name prefix, loading tensors as one dtype on one device.
#[derive(Clone)]
pub struct VarBuilder {
    shared: Arc<Shared>,
    prefix: String,
}

/// What [`VarBuilder::finish`] found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LoadReport {
    /// Names asked for that no file holds.
    pub missing: Vec<String>,
    /// (name, wanted shape, shape in the file).
    pub wrong_shape: Vec<ShapeMismatch>,
    /// Names in the files that nothing asked for.
    pub unused: Vec<String>,
}

impl LoadReport {
    /// True when nothing is missing, wrongly shaped or unused.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.wrong_shape.is_empty() && self.unused.is_empty()
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOW: usize = 20;
        let mut list = |what: &str, items: Vec<String>| -> fmt::Result {
            if !items.is_empty() {
                writeln!(f, "{} {what}:", items.len())?;
                for i in items.iter().take(SHOW) {
                    writeln!(f, "  {i}")?;
                }
                if items.len() > SHOW {
                    writeln!(f, "  … and {} more", items.len() - SHOW)?;
                }
            }
            Ok(())
        };
        list("missing tensors", self.missing.clone())?;
        list(
            "tensors with the wrong shape",
            self.wrong_shape.iter().map(|(n, w, g)| format!("{n}: expected {w:?}, file has {g:?}")).collect(),
        )?;
        list("unused tensors", self.unused.clone())
    }
}

impl VarBuilder {
    /// A builder at the root of `store`, loading as `dtype` onto `device`.
    pub fn new(store: Arc<WeightStore>, dtype: DType, device: &Device) -> VarBuilder {
        Self::with_source(Some(store), 0, dtype, device)
    }

    /// A builder that makes up every tensor it is asked for: seeded normal values scaled
    /// `1/√fan_in` for matrices and convolutions, 0.02 for vectors, and `1 ± 0.02` for norm
    /// weights. For benchmarks of the real architectures without files (nothing is read).
    pub fn random(seed: u64, dtype: DType, device: &Device) -> VarBuilder {
        Self::with_source(None, seed, dtype, device)
    }

    fn with_source(store: Option<Arc<WeightStore>>, seed: u64, dtype: DType, device: &Device) -> VarBuilder {
        VarBuilder {
            shared: Arc::new(Shared {
                store,
                seed,
                dtype,
                device: device.clone(),
                used: Mutex::default(),
                missing: Mutex::default(),
                wrong_shape: Mutex::default(),
            }),
            prefix: String::new(),
        }
    }

    /// The builder one level down: `pp("down_blocks").pp(1)` → prefix `down_blocks.1.`.
    pub fn pp(&self, part: impl fmt::Display) -> VarBuilder {
        VarBuilder { shared: self.shared.clone(), prefix: format!("{}{part}.", self.prefix) }
    }

    /// The full tensor name of `name` under this prefix.
    pub fn path(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The dtype tensors are loaded as.
    pub fn dtype(&self) -> DType {
        self.shared.dtype
    }

    /// The device tensors are loaded onto.
    pub fn device(&self) -> &Device {
        &self.shared.device
    }

    /// The underlying store (None for random weights).
    pub fn store(&self) -> Option<&Arc<WeightStore>> {
        self.shared.store.as_ref()
    }

    /// Whether `name` exists under this prefix (always, for random weights).
    pub fn contains(&self, name: &str) -> bool {
        self.shared.store.as_ref().is_none_or(|s| s.entry(&self.path(name)).is_some())
    }

    /// The shape of `name` in the file, if present.
    pub fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.shared.store.as_ref()?.entry(&self.path(name)).map(|e| e.shape.clone())
    }

    /// Loads `name`, which must have exactly `shape`, as the builder's dtype.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.get_as(name, shape, self.shared.dtype)
    }

    /// Loads `name`, which must have exactly `shape`, as `dtype` (e.g. f32 for a small tensor
    /// that feeds an f32 computation).
    pub fn get_as(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let full = self.path(name);
        let s = &self.shared;
        let Some(store) = &s.store else { return random_tensor(&full, shape, s.seed, dtype, &s.device) };
        s.used.lock().unwrap_or_else(|p| p.into_inner()).insert(full.clone());
        let Some(entry) = store.entry(&full) else {
            s.missing.lock().unwrap_or_else(|p| p.into_inner()).insert(full.clone());
            return Err(Error::Weights(format!("tensor '{full}' (shape {shape:?}) is missing from {}", store.describe_files())));
        };
        if entry.shape != shape {
            let got = entry.shape.clone();
            s.wrong_shape.lock().unwrap_or_else(|p| p.into_inner()).push((full.clone(), shape.to_vec(), got.clone()));
            return Err(Error::Weights(format!(
                "tensor '{full}' in {} has shape {got:?}, expected {shape:?} (does the config match the weights?)",
                store.path_of(entry).display()
            )));
        }
        store.load(&full, dtype, &s.device)
    }

    /// Marks every tensor under this prefix as used without loading it (parts of a checkpoint
    /// that text-to-image never needs, such as Stage A's encoder).
    pub fn skip_all(&self) {
        let Some(store) = &self.shared.store else { return };
        let names: Vec<String> = store.names().filter(|n| n.starts_with(&self.prefix)).map(String::from).collect();
        self.shared.used.lock().unwrap_or_else(|p| p.into_inner()).extend(names);
    }

    /// What was missing, wrongly shaped or unused so far.
    pub fn report(&self) -> LoadReport {
        let s = &self.shared;
        let used = s.used.lock().unwrap_or_else(|p| p.into_inner());
        LoadReport {
            missing: s.missing.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect(),
            wrong_shape: s.wrong_shape.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            unused: s.store.iter().flat_map(|st| st.names()).filter(|n| !used.contains(*n)).map(String::from).collect(),
        }
    }

    /// Ok when every requested tensor was present with its shape and every tensor in the files
    /// was used; otherwise an error listing each problem by name.
    pub fn finish(&self) -> Result<()> {
        let r = self.report();
        if r.is_clean() {
            Ok(())
        } else {
            let files = self.shared.store.as_ref().map_or("random weights".into(), |s| s.describe_files());
            Err(Error::Weights(format!("weights in {files} do not match the model:\n{r}")))
        }
    }
}

/// A made-up tensor for [`VarBuilder::random`], seeded by its name.
fn random_tensor(name: &str, shape: &[usize], seed: u64, dtype: DType, device: &Device) -> Result<Tensor> {
    let mut t = Tensor::empty(shape, dtype, device)?;
    let n: usize = shape.iter().product();
    let norm_weight = shape.len() == 1 && name.ends_with(".weight") && name.contains("norm");
    let (mean, scale) = if norm_weight {
        (1.0, 0.02)
    } else if shape.len() >= 2 {
        let fan_in = n / shape[0].max(1);
        (0.0, 1.0 / (fan_in.max(1) as f32).sqrt())
    } else {
        (0.0, 0.02)
    };
    // FNV-1a of the name: every tensor gets its own stream.
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    crate::ops::fill_random(&mut t, seed ^ h, mean, scale)?;
    Ok(t)
}
