//! The outputs of an inference answer, read straight from its JSON bytes for the prediction
//! metrics of every remote answer ([`super::predictions_from_json`]).
//!
//! serde_json, even reading into borrowed structs, spent about 9,000 instructions on a
//! two-output answer of 200 bytes, an eighth of a proxied request: it checks every key and
//! string as it goes and builds each value through its visitor machinery. This reader checks
//! the answer is UTF-8 once, then walks it byte by byte, keeping only each output's name,
//! datatype, shape and numbers.
//!
//! It is strict where it cannot be sure to read what serde_json would, and then answers `None`
//! (the caller decodes in full): any escape sequence in a string, numbers whose value serde_json
//! might round differently (more than 2^53 in the significand, a power of ten beyond 10^22),
//! a repeated field, `parameters` on an output, nesting deeper than [`MAX_DEPTH`]. JSON it
//! would refuse, it refuses.

/// One output of an answer: what the prediction metrics read of it.
pub struct OutputView<'a> {
    pub name: &'a str,
    pub datatype: &'a str,
    pub shape: Vec<usize>,
    /// `None` when the output has no `data` (or `"data": null`).
    pub data: Option<Vec<f64>>,
}

/// Deeper values are left to serde_json (its own limit is 128).
const MAX_DEPTH: usize = 64;

/// The powers of ten an `f64` holds exactly, as serde_json's table has them.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18,
    1e19, 1e20, 1e21, 1e22,
];

/// The `outputs` of an answer, or `None` when the answer is not JSON, has no `outputs`, or
/// holds something this reader leaves to a full decode.
pub fn outputs(json: &[u8]) -> Option<Vec<OutputView<'_>>> {
    let text = std::str::from_utf8(json).ok()?;
    let mut s = Scanner { text, at: 0 };
    let mut outputs = None;
    let mut model_version = false;
    s.object(|s, key| match key {
        "outputs" if outputs.is_none() => {
            outputs = Some(s.list(Scanner::output)?);
            Some(())
        }
        // A full decode wants a string (or null) here; a repeated field is an error to it.
        "model_version" if !model_version => {
            model_version = true;
            if s.peek()? == b'n' {
                s.literal("null")
            } else {
                s.string().map(drop)
            }
        }
        "outputs" | "model_version" => None,
        _ => s.skip(0),
    })?;
    s.ws();
    (s.at == s.text.len()).then_some(())?;
    outputs
}

struct Scanner<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scanner<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes().get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte after white space, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.bytes().get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        self.ws();
        self.text[self.at..]
            .starts_with(word)
            .then(|| self.at += word.len())
    }

    /// A string without escapes (an escape: `None`), as its text.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        let rest = &self.bytes()[start..];
        let len = string_stop(rest)?;
        (rest[len] == b'"').then_some(())?;
        self.at = start + len + 1;
        // Both ends are ASCII quotes, so this is a char boundary of the checked text.
        Some(&self.text[start..start + len])
    }

    /// An object: `field` is called with each key, positioned at its value.
    fn object(&mut self, mut field: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            field(self, key)?;
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// An array: `item` is called positioned at each element.
    fn array(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        if self.eat(b']').is_some() {
            return Some(());
        }
        loop {
            item(self)?;
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// An array's elements, each read by `item`.
    fn list<T>(&mut self, mut item: impl FnMut(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        let mut items = Vec::with_capacity(2);
        self.array(|s| {
            items.push(item(s)?);
            Some(())
        })?;
        Some(items)
    }

    /// A number as serde_json makes it an `f64`: the significand's integer divided or
    /// multiplied by one power of ten. Only where that is exact in both (a significand below
    /// 2^53, a power up to 10^22) is it read here; serde_json would round the rest its own way.
    fn number(&mut self) -> Option<f64> {
        const EXACT: u64 = 1 << 53;
        self.ws();
        let b = self.bytes();
        let negative = b.get(self.at) == Some(&b'-');
        if negative {
            self.at += 1;
        }
        let mut significand: u64 = 0;
        let mut digits = |s: &mut Self, count: &mut i32| -> Option<()> {
            let start = s.at;
            while let Some(&d @ b'0'..=b'9') = b.get(s.at) {
                significand = significand * 10 + u64::from(d - b'0');
                (significand < EXACT).then_some(())?;
                s.at += 1;
            }
            *count = i32::try_from(s.at - start).ok()?;
            (s.at > start).then_some(())
        };
        let mut whole = 0;
        let first = self.at;
        digits(self, &mut whole)?;
        if whole > 1 && b[first] == b'0' {
            return None; // a leading zero is not JSON
        }
        let mut exponent = 0i32;
        if b.get(self.at) == Some(&b'.') {
            self.at += 1;
            let mut fraction = 0;
            digits(self, &mut fraction)?;
            exponent -= fraction;
        }
        if let Some(b'e' | b'E') = b.get(self.at) {
            self.at += 1;
            let sign = match b.get(self.at) {
                Some(b'-') => {
                    self.at += 1;
                    -1
                }
                Some(b'+') => {
                    self.at += 1;
                    1
                }
                _ => 1,
            };
            let start = self.at;
            let mut e: i32 = 0;
            while let Some(&d @ b'0'..=b'9') = b.get(self.at) {
                e = e.checked_mul(10)?.checked_add(i32::from(d - b'0'))?;
                self.at += 1;
            }
            (self.at > start).then_some(())?;
            exponent = exponent.checked_add(sign * e)?;
        }
        let power = *POW10.get(usize::try_from(exponent.unsigned_abs()).ok()?)?;
        let magnitude = if exponent < 0 {
            significand as f64 / power
        } else {
            significand as f64 * power
        };
        Some(if negative { -magnitude } else { magnitude })
    }

    /// Any JSON value, checked and passed over.
    fn skip(&mut self, depth: usize) -> Option<()> {
        (depth < MAX_DEPTH).then_some(())?;
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => self.object(|s, _| s.skip(depth + 1)),
            b'[' => self.array(|s| s.skip(depth + 1)),
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            _ => self.number().map(drop),
        }
    }

    fn output(&mut self) -> Option<OutputView<'a>> {
        let (mut name, mut datatype, mut shape, mut data) = (None, None, None, None);
        self.object(|s, key| {
            match key {
                "name" if name.is_none() => name = Some(s.string()?),
                "datatype" if datatype.is_none() => datatype = Some(s.string()?),
                "shape" if shape.is_none() => shape = Some(s.list(Self::dimension)?),
                "data" if data.is_none() => {
                    data = Some(if s.peek()? == b'n' {
                        s.literal("null")?;
                        None
                    } else {
                        Some(s.list(Self::number)?)
                    });
                }
                // A repeated field, or parameters (which a full decode reads): not here.
                "name" | "datatype" | "shape" | "data" | "parameters" => return None,
                _ => s.skip(1)?,
            }
            Some(())
        })?;
        Some(OutputView {
            name: name?,
            datatype: datatype?,
            shape: shape?,
            data: data.flatten(),
        })
    }

    /// A dimension: a non-negative integer written without fraction or exponent.
    fn dimension(&mut self) -> Option<usize> {
        self.ws();
        let b = self.bytes();
        let start = self.at;
        while let Some(b'0'..=b'9') = b.get(self.at) {
            self.at += 1;
        }
        let text = &self.text[start..self.at];
        if text.is_empty() || (text.len() > 1 && text.starts_with('0')) {
            return None;
        }
        if let Some(b'.' | b'e' | b'E') = b.get(self.at) {
            return None;
        }
        text.parse().ok()
    }
}

/// Where a string's text stops: the first quote, backslash or control character.
///
/// Eight bytes at a time (most of an answer's bytes are in strings: keys, names, its id). In
/// each word, a byte equal to the quote or the backslash is found as a zero byte of the word
/// xor'ed with that byte repeated, and a control character as a byte below 0x20; the classic
/// test `(x - 0x01…) & !x & 0x80…` can also flag a byte after a true match (a borrow carries
/// into it), never one before, so the lowest flag is the first match.
fn string_stop(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = ONES * 0x80;
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let mut words = bytes.chunks_exact(8);
    let mut at = 0;
    for word in words.by_ref() {
        let x = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        let found =
            below(x ^ (ONES * u64::from(b'"')), 1) | below(x ^ (ONES * u64::from(b'\\')), 1) | below(x, 0x20);
        if found != 0 {
            return Some(at + found.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    let tail = words.remainder();
    tail.iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|i| at + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output's name, datatype, shape and data.
    type Read = (String, String, Vec<usize>, Option<Vec<f64>>);

    fn one(json: &str) -> Option<Read> {
        let mut o = outputs(json.as_bytes())?;
        (o.len() == 1).then_some(())?;
        let o = o.remove(0);
        Some((o.name.into(), o.datatype.into(), o.shape, o.data))
    }

    #[test]
    fn reads_outputs_and_passes_over_the_rest() {
        let json = r#" { "id" : "a", "parameters": {"x": [1, {"y": null}], "t": true, "f": false},
            "outputs": [ {"name": "label", "datatype": "INT64", "shape": [2], "data": [0, -1],
            "extra": "é"} ], "model_name": "m" } "#;
        let (name, dtype, shape, data) = one(json).unwrap();
        assert_eq!((name.as_str(), dtype.as_str()), ("label", "INT64"));
        assert_eq!(shape, vec![2]);
        assert_eq!(data, Some(vec![0.0, -1.0]));
        assert_eq!(
            one(r#"{"outputs":[{"name":"a","datatype":"FP32","shape":[],"data":null}]}"#)
                .unwrap()
                .3,
            None
        );
        assert_eq!(outputs(br#"{"outputs":[]}"#).map(|o| o.len()), Some(0));
    }

    #[test]
    fn a_string_stops_where_a_byte_by_byte_search_does() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let pick = [
            b'a', b'"', b'\\', 0x00, 0x1f, 0x20, 0x21, 0x5b, 0x5d, 0x7f, 0x80, 0xa2, 0xdc, 0xff,
        ];
        for _ in 0..20_000 {
            let len = rng.random_range(0..40);
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.random_bool(0.9) {
                        b'a' + rng.random_range(0..26u8)
                    } else {
                        pick[rng.random_range(0..pick.len())]
                    }
                })
                .collect();
            let expected = bytes.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
            assert_eq!(string_stop(&bytes), expected, "{bytes:?}");
        }
    }

    #[test]
    fn numbers_are_the_ones_serde_json_reads() {
        for text in [
            "0",
            "-0",
            "7",
            "-12",
            "0.5",
            "0.99999976",
            "2.0861626e-7",
            "1E5",
            "1e+3",
            "-3.25e-2",
            "9007199254740991",
            "1.5e22",
            "123456.789e-10",
        ] {
            let json =
                format!(r#"{{"outputs":[{{"name":"x","datatype":"FP64","shape":[1],"data":[{text}]}}]}}"#);
            let ours = one(&json).unwrap().3.unwrap()[0];
            let theirs: f64 = serde_json::from_str(text).unwrap();
            assert_eq!(ours.to_bits(), theirs.to_bits(), "{text}");
        }
    }

    #[test]
    fn leaves_to_a_full_decode_what_it_cannot_be_sure_of() {
        let with = |data: &str| {
            format!(r#"{{"outputs":[{{"name":"x","datatype":"FP64","shape":[1],"data":{data}}}]}}"#)
        };
        // Values serde_json might round otherwise, and numbers that are not JSON.
        for data in [
            "[9007199254740993]",
            "[1e23]",
            "[1e-30]",
            "[01]",
            "[1.]",
            "[.5]",
            "[+1]",
            "[-]",
            "[1e]",
            "[true]",
            "[[1]]",
        ] {
            assert!(one(&with(data)).is_none(), "{data}");
        }
        for json in [
            r#"{"outputs":[{"name":"a\"b","datatype":"FP32","shape":[1],"data":[1]}]}"#, // escape
            r#"{"outputs":[{"name":"a","datatype":"FP32","shape":[1],"data":[1],"parameters":{}}]}"#,
            r#"{"outputs":[{"name":"a","name":"b","datatype":"FP32","shape":[1],"data":[1]}]}"#,
            r#"{"outputs":[],"outputs":[]}"#,
            r#"{"model_version":1,"outputs":[]}"#,
            r#"{"outputs":[{"datatype":"FP32","shape":[1],"data":[1]}]}"#, // no name
            r#"{"outputs":[{"name":"a","datatype":"FP32","shape":[1.0],"data":[1]}]}"#,
            r#"{"outputs":[{"name":"a","datatype":"FP32","shape":[-1],"data":[1]}]}"#,
            r#"{"outputs":[]} x"#,
            r#"{"outputs":[],}"#,
            r#"{"id":"a	b","outputs":[]}"#, // a raw tab in a string
            r#"{"id":"a"}"#,
            r#"[]"#,
            "",
        ] {
            assert!(outputs(json.as_bytes()).is_none(), "{json}");
        }
        let deep = format!(r#"{{"p":{}1{},"outputs":[]}}"#, "[".repeat(70), "]".repeat(70));
        assert!(outputs(deep.as_bytes()).is_none());
        assert!(outputs(b"{\"id\":\"\xff\",\"outputs\":[]}").is_none());
    }
}
