//! The one error type of the engine. Every message says what went wrong and, where there is
//! one, what to do about it.

use std::path::PathBuf;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or is malformed; the message names the problem.
    #[error("{path}: {msg}")]
    File {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// Weights are missing, have the wrong shape, or are unused.
    #[error("{0}")]
    Weights(String),
    /// Shapes, dtypes or devices of the arguments do not fit the operation.
    #[error("{0}")]
    Shape(String),
    /// CUDA was asked for but is not usable here (no driver, no GPU, or not built in).
    #[error("CUDA is not available: {0}")]
    NoCuda(String),
    /// An error reported by the CUDA driver or cuBLASLt.
    #[error("CUDA error: {0}")]
    Cuda(String),
    /// A device buffer could not be allocated.
    #[error("out of GPU memory: {0}")]
    OutOfMemory(String),
    /// The caller cancelled the request (between steps); the engine is ready for the next one.
    #[error("cancelled")]
    Cancelled,
    /// Anything else, with a message.
    #[error("{0}")]
    Msg(String),
    /// An I/O error without a more specific context.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Result with the engine's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error about `path`.
    pub fn file(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::File { path: path.into(), msg: msg.into() }
    }
}

/// Returns early with an [`Error::Shape`] built from a format string.
#[macro_export]
macro_rules! shape_bail {
    ($($arg:tt)*) => { return Err($crate::Error::Shape(format!($($arg)*))) };
}
