//! `POST /v2/models/{model}/feedback`: the true labels of an earlier prediction, later.
//!
//! The body is `{"request_id": "<x-request-id of the prediction>", "labels": [<one per
//! row>]}` or a JSON list of such objects. Each is joined with what the prediction recorded
//! ([`super::store`]) only when everything agrees: the same tenant, the same model, as many
//! labels as the prediction had rows, within the TTL, not labelled before, and a request id
//! that named one prediction only. Anything else gets its reason, never a join.

use serde::Deserialize;
use serde::Serialize;

/// Items in one feedback body, at most (the body limit bounds it too).
pub const MAX_ITEMS: usize = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    pub request_id: String,
    pub labels: Vec<i64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Body {
    One(Item),
    Many(Vec<Item>),
}

/// The items of a body, and whether it was a single object (answered with its own status).
pub fn parse(body: &[u8]) -> Result<(Vec<Item>, bool), String> {
    let parsed: Body = serde_json::from_slice(body).map_err(|_| {
        // serde's untagged error says only "did not match any variant": say what is wanted.
        match serde_json::from_slice::<serde_json::Value>(body) {
            Err(e) => format!("feedback is not JSON: {e}"),
            Ok(_) => "feedback must be {\"request_id\": \"<x-request-id of the prediction>\", \"labels\": [<one integer class per row>]} or a list of such objects".to_string(),
        }
    })?;
    let (items, single) = match parsed {
        Body::One(i) => (vec![i], true),
        Body::Many(v) => (v, false),
    };
    if items.len() > MAX_ITEMS {
        return Err(format!(
            "{} feedback items in one body; at most {MAX_ITEMS}",
            items.len()
        ));
    }
    if items.is_empty() {
        return Err("an empty list of feedback".into());
    }
    Ok((items, single))
}

/// What became of one item.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Joined {
        rows: usize,
        correct: usize,
    },
    /// No prediction with this id (never made here, not recorded, or forgotten).
    Unknown,
    /// The prediction is older than the feedback TTL.
    Expired {
        age_s: u64,
        ttl_s: u64,
    },
    Duplicate,
    Ambiguous,
    OtherTenant,
    OtherModel(String),
    Rows {
        labels: usize,
        rows: usize,
    },
    BadId,
    /// The shared store did not answer.
    Unavailable(String),
}

impl Outcome {
    pub fn result(&self) -> &'static str {
        match self {
            Outcome::Joined { .. } => "joined",
            Outcome::Unknown => "unknown",
            Outcome::Expired { .. } => "expired",
            Outcome::Duplicate => "duplicate",
            Outcome::Ambiguous => "ambiguous",
            Outcome::OtherTenant => "other_tenant",
            Outcome::OtherModel(_) | Outcome::Rows { .. } | Outcome::BadId => "invalid",
            Outcome::Unavailable(_) => "unavailable",
        }
    }

    /// The status a single-item body is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Outcome::Joined { .. } => 200,
            Outcome::Unknown => 404,
            Outcome::Expired { .. } => 410,
            Outcome::Duplicate | Outcome::Ambiguous => 409,
            Outcome::OtherTenant => 403,
            Outcome::OtherModel(_) | Outcome::Rows { .. } | Outcome::BadId => 400,
            Outcome::Unavailable(_) => 503,
        }
    }

    pub fn message(&self, id: &str) -> String {
        match self {
            Outcome::Joined { rows, correct } => {
                format!("joined {rows} labels ({correct} predicted correctly)")
            }
            Outcome::Unknown => format!(
                "no prediction with request id {id:?} is known here (never made, not answered with a prediction, more than 1024 rows, or forgotten: the store keeps predictions for twice the feedback TTL, within its memory bound)"
            ),
            Outcome::Expired { age_s, ttl_s } => {
                format!("the prediction {id:?} is {age_s} s old; feedback is accepted for {ttl_s} s")
            }
            Outcome::Duplicate => format!("request {id:?} was already labelled; the first labels count"),
            Outcome::Ambiguous => format!(
                "request id {id:?} named more than one prediction (a client's own x-request-id sent twice); it cannot be joined safely"
            ),
            Outcome::OtherTenant => format!("request {id:?} was made by another tenant"),
            Outcome::OtherModel(m) => {
                format!("request {id:?} was a prediction of model {m:?}, not of this one")
            }
            Outcome::Rows { labels, rows } => {
                format!(
                    "{labels} labels for request {id:?}, whose prediction had {rows} rows: one label per row"
                )
            }
            Outcome::BadId => "request_id must be 1 to 128 printable ASCII characters".into(),
            Outcome::Unavailable(e) => {
                format!("the shared feedback store did not answer: {e}; send it again")
            }
        }
    }
}

/// The answer: counts by result, and one line per item.
#[derive(Debug, Default, Serialize)]
pub struct Answer {
    pub joined: usize,
    pub unknown: usize,
    pub expired: usize,
    pub duplicate: usize,
    pub refused: usize,
    pub results: Vec<ItemAnswer>,
}

#[derive(Debug, Serialize)]
pub struct ItemAnswer {
    pub request_id: String,
    pub result: &'static str,
    pub message: String,
}

impl Answer {
    pub fn of(items: &[Item], outcomes: &[Outcome]) -> Answer {
        let mut a = Answer::default();
        for (item, o) in items.iter().zip(outcomes) {
            match o {
                Outcome::Joined { .. } => a.joined += 1,
                Outcome::Unknown => a.unknown += 1,
                Outcome::Expired { .. } => a.expired += 1,
                Outcome::Duplicate => a.duplicate += 1,
                _ => a.refused += 1,
            }
            a.results.push(ItemAnswer {
                request_id: item.request_id.clone(),
                result: o.result(),
                message: o.message(&item.request_id),
            });
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_object_or_a_list() {
        let (items, single) = parse(br#"{"request_id":"a","labels":[1,0]}"#).unwrap();
        assert!(single && items[0].labels == vec![1, 0]);
        let (items, single) =
            parse(br#"[{"request_id":"a","labels":[1]},{"request_id":"b","labels":[0]}]"#).unwrap();
        assert!(!single && items.len() == 2);
        assert!(parse(b"[]").unwrap_err().contains("empty"));
        assert!(parse(b"{").unwrap_err().contains("not JSON"));
        for bad in [
            &br#"{"request_id":"a"}"#[..],
            br#"{"request_id":"a","labels":[1.5]}"#,
            br#"{"request_id":"a","labels":["x"]}"#,
            br#"{"request_id":"a","labels":[1],"extra":1}"#,
        ] {
            assert!(
                parse(bad).unwrap_err().contains("request_id"),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
