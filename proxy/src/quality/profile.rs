//! A model version's reference profile (`profile.json`, written by `models/train.py` beside
//! `model.onnx`): per input feature the training data's decile bin edges and the share of
//! training rows in each bin, and the training labels' class shares. Input drift is measured
//! against it.

use std::path::Path;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct Feature {
    pub name: String,
    /// Ascending bin edges; a value `v` is in bin `edges.partition_point(|e| e <= v)`, the
    /// rule `models/train.py` binned the training rows with (`searchsorted(side="right")`).
    pub edges: Vec<f64>,
    /// Share of training rows per bin: `edges.len() + 1` of them, summing to 1.
    pub shares: Vec<f64>,
}

impl Feature {
    pub fn bin(&self, v: f64) -> usize {
        self.edges.partition_point(|e| *e <= v)
    }
}

#[derive(Debug, Deserialize)]
pub struct Profile {
    pub model: String,
    pub version: u64,
    /// Training rows the profile was computed from.
    pub rows: u64,
    pub features: Vec<Feature>,
    /// Class labels of the training data, and their shares.
    pub classes: Vec<i64>,
    pub class_shares: Vec<f64>,
}

impl Profile {
    /// Reads and checks a profile; `width` is the model's features per row, when known.
    pub fn load(path: &Path, width: Option<usize>) -> Result<Profile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let p: Profile =
            serde_json::from_str(&text).map_err(|e| format!("{}: not a profile: {e}", path.display()))?;
        p.check(width).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(p)
    }

    fn check(&self, width: Option<usize>) -> Result<(), String> {
        if let Some(w) = width
            && w != self.features.len()
        {
            return Err(format!(
                "profile has {} features but the model takes {w} per row",
                self.features.len()
            ));
        }
        let sums_to_one = |s: &[f64]| (s.iter().sum::<f64>() - 1.0).abs() < 1e-3;
        for f in &self.features {
            if f.shares.len() != f.edges.len() + 1 {
                return Err(format!(
                    "feature {:?}: {} edges need {} shares",
                    f.name,
                    f.edges.len(),
                    f.edges.len() + 1
                ));
            }
            if f.edges.windows(2).any(|w| w[0] >= w[1]) || f.edges.iter().any(|e| !e.is_finite()) {
                return Err(format!(
                    "feature {:?}: edges must be finite and ascending",
                    f.name
                ));
            }
            if !sums_to_one(&f.shares) {
                return Err(format!("feature {:?}: bin shares do not sum to 1", f.name));
            }
        }
        if self.classes.len() != self.class_shares.len() || !sums_to_one(&self.class_shares) {
            return Err("classes and class_shares must pair up and sum to 1".into());
        }
        Ok(())
    }

    /// The training share of a class (0 for a class the training data never had).
    pub fn class_share(&self, class: i64) -> f64 {
        self.classes
            .iter()
            .position(|c| *c == class)
            .map_or(0.0, |i| self.class_shares[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundled(model: &str, version: u64) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models")
            .join(model)
            .join(version.to_string())
            .join("profile.json")
    }

    #[test]
    fn bundled_profiles_load_and_bin_like_numpy() {
        let p = Profile::load(&bundled("breast-cancer", 1), Some(30)).unwrap();
        assert_eq!(p.features.len(), 30);
        assert_eq!(p.classes, vec![0, 1]);
        let f = &p.features[0];
        // A value equal to an edge goes to the bin above it (searchsorted side="right").
        assert_eq!(f.bin(f.edges[0]), 1);
        assert_eq!(f.bin(f.edges[0] - 1e-3), 0);
        assert_eq!(f.bin(f64::MAX), f.edges.len());
        let d = Profile::load(&bundled("digits", 1), Some(64)).unwrap();
        assert_eq!(d.classes.len(), 10);
        assert!(
            Profile::load(&bundled("digits", 1), Some(30))
                .unwrap_err()
                .contains("takes 30")
        );
    }
}
