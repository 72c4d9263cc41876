//! The Open Inference Protocol's REST paths, parsed once into an enum so that the server and
//! the gateway agree on what each path means and which method it takes.

/// A recognised path. Model and version borrow from the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint<'a> {
    /// `GET /v2/health/live`
    Live,
    /// `GET /v2/health/ready`
    Ready,
    /// `GET /v2`
    Server,
    /// `GET /v2/models/{m}[/versions/{v}]`
    Model(ModelRef<'a>),
    /// `GET /v2/models/{m}[/versions/{v}]/ready`
    ModelReady(ModelRef<'a>),
    /// `GET /v2/models/{m}[/versions/{v}]/config` (Triton's extension; `tritonclient` asks)
    ModelConfig(ModelRef<'a>),
    /// `POST /v2/models/{m}[/versions/{v}]/infer`
    Infer(ModelRef<'a>),
}

/// A model named in a path, with its version when the path gives one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelRef<'a> {
    pub model: &'a str,
    pub version: Option<&'a str>,
}

impl<'a> Endpoint<'a> {
    /// Parses a request path (without the query string). `None`: not a protocol path.
    pub fn parse(path: &'a str) -> Option<Endpoint<'a>> {
        let rest = path.strip_prefix("/v2")?;
        if rest.is_empty() {
            return Some(Endpoint::Server);
        }
        // At most five segments (models/m/versions/v/infer), split without allocating: this
        // runs for every request the gateway serves.
        let mut parts = [""; 5];
        let mut n = 0;
        let mut rest = rest.strip_prefix('/')?;
        loop {
            let end = rest.bytes().position(|b| b == b'/').unwrap_or(rest.len());
            if end == 0 || n == parts.len() {
                return None;
            }
            parts[n] = &rest[..end];
            n += 1;
            match rest.get(end + 1..) {
                Some(next) => rest = next,
                None => break,
            }
        }
        match &parts[..n] {
            ["health", "live"] => Some(Endpoint::Live),
            ["health", "ready"] => Some(Endpoint::Ready),
            ["models", model, tail @ ..] => {
                let (version, tail) = match tail {
                    ["versions", v, tail @ ..] => (Some(*v), tail),
                    _ => (None, tail),
                };
                let m = ModelRef { model, version };
                match tail {
                    [] => Some(Endpoint::Model(m)),
                    ["ready"] => Some(Endpoint::ModelReady(m)),
                    ["config"] => Some(Endpoint::ModelConfig(m)),
                    ["infer"] => Some(Endpoint::Infer(m)),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// The one method this path answers to.
    pub fn method(&self) -> &'static str {
        match self {
            Endpoint::Infer(_) => "POST",
            _ => "GET",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const fn m(model: &'static str, version: Option<&'static str>) -> ModelRef<'static> {
        ModelRef { model, version }
    }

    #[rstest]
    #[case("/v2", Some(Endpoint::Server))]
    #[case("/v2/health/live", Some(Endpoint::Live))]
    #[case("/v2/health/ready", Some(Endpoint::Ready))]
    #[case("/v2/models/a", Some(Endpoint::Model(m("a", None))))]
    #[case("/v2/models/a/versions/3", Some(Endpoint::Model(m("a", Some("3")))))]
    #[case("/v2/models/a/ready", Some(Endpoint::ModelReady(m("a", None))))]
    #[case(
        "/v2/models/a/versions/2/ready",
        Some(Endpoint::ModelReady(m("a", Some("2"))))
    )]
    #[case("/v2/models/a/config", Some(Endpoint::ModelConfig(m("a", None))))]
    #[case("/v2/models/a/infer", Some(Endpoint::Infer(m("a", None))))]
    #[case("/v2/models/a/versions/1/infer", Some(Endpoint::Infer(m("a", Some("1")))))]
    #[case("/v2/", None)]
    #[case("/v2/models", None)]
    #[case("/v2/models/", None)]
    #[case("/v2/models/a/", None)]
    #[case("/v2/models/a/versions", None)]
    #[case("/v2/models/a/predict", None)]
    #[case("/v2x", None)]
    #[case("/v1/models/a", None)]
    #[case("/", None)]
    #[case("/v2/models/a/versions/1/infer/x", None)]
    #[case("/v2//health/live", None)]
    #[case("/v2/health/live/", None)]
    fn paths(#[case] path: &str, #[case] want: Option<Endpoint<'static>>) {
        assert_eq!(Endpoint::parse(path), want);
    }

    #[test]
    fn only_infer_is_post() {
        assert_eq!(Endpoint::Infer(m("a", None)).method(), "POST");
        assert_eq!(Endpoint::Model(m("a", None)).method(), "GET");
    }
}
