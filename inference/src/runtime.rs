//! Finding and loading the ONNX Runtime shared library, once per process.
//!
//! The library is loaded at run time (`ort`'s `load-dynamic`), because its own download cannot
//! work here; `scripts/setup.sh` fetches it from the PyPI wheel into `.ort/lib/`. ONNX Runtime
//! allows one environment per process, so this is the one place with process-global state.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The ONNX Runtime release the project is built and tested against.
pub const ORT_VERSION: &str = "1.31.1";
/// `ort` is built with `api-31`: an older library lacks functions it calls.
const MIN_MINOR: u32 = 31;
const LIB_NAME: &str = "libonnxruntime.so.1.31.1";

static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// The process's ONNX Runtime environment, loading the library on first use.
///
/// The error names every place that was looked at and how to get the library.
pub fn environment() -> Result<&'static ort::environment::Environment, String> {
    ENVIRONMENT
        .get_or_init(|| {
            let path = locate_library()?;
            match ort::util::probe(&path) {
                Some(minor) if minor >= MIN_MINOR => {}
                Some(minor) => {
                    return Err(format!(
                        "{} is ONNX Runtime 1.{minor}; this build needs 1.{MIN_MINOR} or newer \
                         (run scripts/setup.sh to fetch {ORT_VERSION})",
                        path.display()
                    ));
                }
                None => {
                    return Err(format!(
                        "{} could not be loaded as an ONNX Runtime 1.x library",
                        path.display()
                    ));
                }
            }
            let builder = ort::init_from(&path)
                .map_err(|e| format!("loading ONNX Runtime from {}: {e}", path.display()))?;
            builder
                .with_name("inference")
                // Sessions bring their own (single-thread) pools; telemetry has nowhere to go.
                .with_telemetry(false)
                .build()
                .map_err(|e| format!("creating the ONNX Runtime environment: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Where the library is, in order: `ORT_DYLIB_PATH`, then the project's fetched copy in
/// `.ort/lib/` (searched from the working directory, the executable, and the source tree).
pub fn locate_library() -> Result<PathBuf, String> {
    let env_value = std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty());
    if let Some(value) = &env_value {
        let path = PathBuf::from(value);
        if path.is_file() {
            return Ok(path);
        }
        return Err(format!(
            "ORT_DYLIB_PATH is set to {}, which is not a file. Point it at a \
             libonnxruntime.so.{ORT_VERSION}, or unset it to use the project's copy \
             fetched by scripts/setup.sh into .ort/lib/",
            path.display()
        ));
    }
    let candidates = project_candidates();
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let looked: Vec<String> = candidates.iter().map(|p| format!("  {}", p.display())).collect();
    Err(format!(
        "ONNX Runtime shared library not found.\n\
         ORT_DYLIB_PATH is not set, and the project's copy is not at:\n{}\n\
         Fetch it with `scripts/setup.sh` (downloads the PyPI wheel onnxruntime=={ORT_VERSION} \
         and extracts {LIB_NAME} into .ort/lib/), or set ORT_DYLIB_PATH to a {LIB_NAME}.",
        looked.join("\n")
    ))
}

fn project_candidates() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    // target/<profile>/<bin>: the repository is a few levels up from the executable.
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    // Tests and `cargo run` from anywhere: the workspace this crate was built from.
    roots.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    let mut out: Vec<PathBuf> = Vec::new();
    for root in roots {
        let candidate = root.join(".ort").join("lib").join(LIB_NAME);
        if !out.contains(&candidate) {
            out.push(candidate);
        }
    }
    out
}
