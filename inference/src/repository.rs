//! The model repository on disk: `<root>/<name>/<version>/model.onnx`, as Triton and KServe
//! lay it out. Versions are positive integers; without one, a request gets the highest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::InferError;
use crate::model::LoadError;
use crate::pool::{Pool, PoolConfig};

/// One `model.onnx` found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelFile {
    pub name: String,
    pub version: u64,
    pub path: PathBuf,
}

/// Lists the model files under `root`, sorted by name then version. Anything that looks like
/// a model but does not follow the layout is an error, so a typo is not silently skipped.
pub fn scan(root: &Path) -> Result<Vec<ModelFile>, String> {
    let entries = std::fs::read_dir(root)
        .map_err(|e| format!("cannot read model repository {}: {e}", root.display()))?;
    let mut found = Vec::new();
    let mut problems = Vec::new();
    for entry in entries.flatten() {
        let model_dir = entry.path();
        if !model_dir.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().to_string();
        // Folders that hold no versions (testdata, scripts' caches) are not models.
        let Ok(versions) = std::fs::read_dir(&model_dir) else {
            continue;
        };
        for version_entry in versions.flatten() {
            let file = version_entry.path().join("model.onnx");
            if !file.is_file() {
                continue;
            }
            let version_name = version_entry.file_name().to_string_lossy().to_string();
            if !valid_name(&name) {
                problems.push(format!(
                    "{}: model names may use letters, digits, '-', '_' and '.'",
                    file.display()
                ));
                continue;
            }
            match version_name.parse::<u64>() {
                Ok(v) if v > 0 => found.push(ModelFile {
                    name: name.clone(),
                    version: v,
                    path: file,
                }),
                _ => problems.push(format!(
                    "{}: version folder {version_name:?} must be a positive integer",
                    file.display()
                )),
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems.join("\n"));
    }
    if found.is_empty() {
        return Err(format!(
            "no models under {}: expected <name>/<version>/model.onnx",
            root.display()
        ));
    }
    found.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
    Ok(found)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Every model version of a repository, each with its own pool.
#[derive(Default)]
pub struct ModelRepository {
    models: BTreeMap<String, BTreeMap<u64, Arc<Pool>>>,
}

impl ModelRepository {
    /// Loads every model under `root`. All failures are reported together, each with the
    /// model's path and ONNX Runtime's reason.
    pub fn load(root: &Path, config: &PoolConfig) -> Result<ModelRepository, Vec<LoadError>> {
        let files = scan(root).map_err(|reason| {
            vec![LoadError {
                model: "*".into(),
                path: root.to_path_buf(),
                reason,
            }]
        })?;
        let mut repo = ModelRepository::default();
        let mut errors = Vec::new();
        for ModelFile { name, version, path } in files {
            match Pool::load(&name, &version.to_string(), &path, config.clone()) {
                Ok(pool) => repo.insert(&name, version, Arc::new(pool)),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() { Ok(repo) } else { Err(errors) }
    }

    pub fn insert(&mut self, name: &str, version: u64, pool: Arc<Pool>) {
        self.models
            .entry(name.to_string())
            .or_default()
            .insert(version, pool);
    }

    /// The pool for `name` at `version` (the highest version when `None`).
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<&Arc<Pool>, InferError> {
        let versions = self
            .models
            .get(name)
            .ok_or_else(|| InferError::NotFound(format!("unknown model {name:?}")))?;
        match version {
            None => Ok(versions
                .values()
                .next_back()
                .expect("a model has at least one version")),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .and_then(|v| versions.get(&v))
                .ok_or_else(|| {
                    InferError::NotFound(format!(
                        "unknown version {v:?} of model {name:?} (available: {})",
                        self.versions(name).join(", ")
                    ))
                }),
        }
    }

    /// The versions of `name`, lowest first.
    pub fn versions(&self, name: &str) -> Vec<String> {
        self.models
            .get(name)
            .map(|v| v.keys().map(u64::to_string).collect())
            .unwrap_or_default()
    }

    /// Every (name, version, pool), sorted.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64, &Arc<Pool>)> {
        self.models
            .iter()
            .flat_map(|(name, versions)| versions.iter().map(move |(v, p)| (name.as_str(), *v, p)))
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(root: &Path, rel: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("repo-scan-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn scan_finds_versions_in_order() {
        let root = tempdir("ok");
        touch(&root, "b/2/model.onnx");
        touch(&root, "b/10/model.onnx");
        touch(&root, "a/1/model.onnx");
        touch(&root, "testdata/x.json");
        let found: Vec<(String, u64)> = scan(&root)
            .unwrap()
            .into_iter()
            .map(|m| (m.name, m.version))
            .collect();
        assert_eq!(found, vec![("a".into(), 1), ("b".into(), 2), ("b".into(), 10)]);
    }

    #[test]
    fn scan_reports_bad_layout() {
        let root = tempdir("bad");
        touch(&root, "a/latest/model.onnx");
        touch(&root, "a/0/model.onnx");
        let err = scan(&root).unwrap_err();
        assert!(err.contains("\"latest\" must be a positive integer"), "{err}");
        assert!(err.contains("\"0\" must be a positive integer"), "{err}");
        let empty = tempdir("empty");
        assert!(scan(&empty).unwrap_err().contains("no models"));
        assert!(scan(&empty.join("missing")).unwrap_err().contains("cannot read"));
    }
}
