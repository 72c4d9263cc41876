//! The `inference-server` HTTP surface, over real sockets: every endpoint, every error with
//! its status and message, the binary tensor extension, HTTP/2. Its limits, overload and
//! hostile clients: `server_limits.rs`.

use crate::common::*;
use serde_json::json;

#[tokio::test]
async fn health_and_metadata() {
    let s = server().await;
    let c = client();
    let live = get(&c, &s.url("/v2/health/live")).await;
    assert_eq!((live.status, live.json()), (200, json!({"live": true})));
    assert_eq!(get(&c, &s.url("/v2/health/ready")).await.status, 200);
    let meta = get(&c, &s.url("/v2")).await.json();
    assert_eq!(meta["name"], "inference-server");
    assert!(
        meta["extensions"]
            .as_array()
            .unwrap()
            .contains(&json!("binary_tensor_data"))
    );

    let model = get(&c, &s.url("/v2/models/breast-cancer")).await;
    assert_eq!(model.status, 200);
    assert_eq!(
        model.json(),
        json!({
            "name": "breast-cancer", "versions": ["1", "2", "3"], "platform": "onnxruntime_onnx",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}],
            "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]
        })
    );
    let digits = get(&c, &s.url("/v2/models/digits/versions/1")).await.json();
    assert_eq!(digits["outputs"][1]["shape"], json!([-1, 10]));
    let ready = get(&c, &s.url("/v2/models/breast-cancer/versions/2/ready")).await;
    assert_eq!((ready.status, ready.json()["ready"].clone()), (200, json!(true)));
    let config = get(&c, &s.url("/v2/models/breast-cancer/config")).await.json();
    assert_eq!(config["max_batch_size"], 32);
    assert_eq!(config["input"][0]["dims"], json!([30]));
    let fixed = get(&c, &s.url("/v2/models/fixed/config")).await.json();
    assert_eq!(fixed["max_batch_size"], 0);
}

#[tokio::test]
async fn infer_json_flat_nested_and_filtered() {
    let s = server().await;
    let c = client();
    let url = s.url("/v2/models/breast-cancer/versions/1/infer");
    let flat = post_json(&c, &url, &example()).await;
    assert_eq!(flat.status, 200, "{:?}", flat.body);
    assert_eq!(flat.header("content-type"), Some("application/json"));
    let body = flat.json();
    assert_eq!(body["model_name"], "breast-cancer");
    assert_eq!(body["model_version"], "1");
    assert_eq!(body["outputs"][0]["name"], "label");
    assert_eq!(body["outputs"][0]["datatype"], "INT64");
    assert_eq!(body["outputs"][1]["shape"], json!([1, 2]));
    // No id in the request: the response's id is the request id, also in the header.
    assert_eq!(body["id"].as_str(), flat.header("x-request-id"));

    // The same row, nested, with an id and only one output asked for.
    let mut nested = example();
    let row = nested["inputs"][0]["data"].clone();
    nested["inputs"][0]["data"] = json!([row]);
    nested["id"] = json!("req-7");
    nested["outputs"] = json!([{"name": "probabilities"}]);
    let r = send(
        &c,
        "POST",
        &url,
        &[("x-request-id", "trace-1")],
        nested.to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), Some("trace-1"));
    let b = r.json();
    assert_eq!(b["id"], "req-7");
    assert_eq!(b["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(b["outputs"][0]["data"], body["outputs"][1]["data"]);

    // Without a version: the highest one answers.
    let latest = post_json(&c, &s.url("/v2/models/breast-cancer/infer"), &example())
        .await
        .json();
    assert_eq!(latest["model_version"], "3");
}

#[tokio::test]
async fn other_datatypes_and_several_inputs() {
    let s = server().await;
    let c = client();
    let body = json!({"inputs": [
        {"name": "b", "shape": [2, 2], "datatype": "INT32", "data": [[1, 2], [3, -4]]},
        {"name": "a", "shape": [2, 2], "datatype": "FP64", "data": [0.5, 1.25, -2, 1e300]}
    ]});
    let r = post_json(&c, &s.url("/v2/models/types/infer"), &body).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let out = r.json();
    assert_eq!(
        out["outputs"][0],
        json!({"name": "a2", "datatype": "FP64", "shape": [2, 2], "data": [1.0, 2.5, -4.0, 2e300]})
    );
    assert_eq!(
        out["outputs"][1],
        json!({"name": "b1", "datatype": "INT32", "shape": [2, 2], "data": [2, 3, 4, -3]})
    );
    let g = post_json(
        &c,
        &s.url("/v2/models/gather/infer"),
        &json!({"inputs": [{"name": "index", "shape": [3, 1], "datatype": "INT64", "data": [0, 9, 2]}]}),
    )
    .await;
    assert_eq!(g.json()["outputs"][0]["data"], json!([0.0, 90.0, 20.0]));
}

/// `tritonclient.http`'s default: inputs as raw bytes after the JSON header, outputs too.
#[tokio::test]
async fn binary_tensor_extension() {
    let s = server().await;
    let c = client();
    let data: Vec<f32> = example()["inputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    let header = json!({
        "inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "parameters": {"binary_data_size": 120}}],
        "parameters": {"binary_data_output": true}
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    for x in &data {
        body.extend_from_slice(&x.to_le_bytes());
    }
    let len = header.len().to_string();
    let r = send(
        &c,
        "POST",
        &s.url("/v2/models/breast-cancer/versions/1/infer"),
        &[
            ("inference-header-content-length", &len),
            ("content-type", "application/octet-stream"),
        ],
        body,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let json_len: usize = r
        .header("inference-header-content-length")
        .expect("binary response")
        .parse()
        .unwrap();
    let head: serde_json::Value = serde_json::from_slice(&r.body[..json_len]).unwrap();
    let outputs = head["outputs"].as_array().unwrap();
    assert_eq!(outputs[0]["parameters"]["binary_data_size"], 8);
    assert_eq!(outputs[1]["parameters"]["binary_data_size"], 8);
    assert!(outputs[0].get("data").is_none());
    let raw = &r.body[json_len..];
    assert_eq!(raw.len(), 16);
    let label = i64::from_le_bytes(raw[..8].try_into().unwrap());
    let p0 = f32::from_le_bytes(raw[8..12].try_into().unwrap());
    let p1 = f32::from_le_bytes(raw[12..16].try_into().unwrap());

    // The same request in JSON gives the same numbers.
    let j = post_json(
        &c,
        &s.url("/v2/models/breast-cancer/versions/1/infer"),
        &example(),
    )
    .await
    .json();
    assert_eq!(j["outputs"][0]["data"][0].as_i64().unwrap(), label);
    assert_eq!(j["outputs"][1]["data"][0].as_f64().unwrap() as f32, p0);
    assert_eq!(j["outputs"][1]["data"][1].as_f64().unwrap() as f32, p1);
}

#[tokio::test]
async fn http2_prior_knowledge() {
    let s = server().await;
    let r = post_json(
        &h2_client(),
        &s.url("/v2/models/digits/infer"),
        &infer_body(&vector_rows(&vectors("digits", 1))[..3]),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["outputs"][1]["shape"], json!([3, 10]));
}

/// Every bad request gets its status and a message that says what is wrong.
#[tokio::test]
async fn every_bad_request_gets_its_status_and_message() {
    let s = server().await;
    let c = client();
    let input = |name: &str, shape: serde_json::Value, datatype: &str, data: serde_json::Value| {
        json!({"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}).to_string()
    };
    let row = example()["inputs"][0]["data"].clone();
    let mut short_row = row.as_array().unwrap().clone();
    short_row.pop();
    let mut too_big = row.as_array().unwrap().clone();
    too_big[3] = json!(1e39); // finite in JSON, infinite as FP32
    let bc = "/v2/models/breast-cancer/infer";
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("POST", bc, "{".into(), 400, "invalid inference request JSON"),
        ("POST", bc, "{}".into(), 400, "missing field `inputs`"),
        ("POST", bc, "[1, 2]".into(), 400, "invalid inference request JSON"),
        ("POST", bc, json!({"inputs": []}).to_string(), 400, "no inputs"),
        (
            "POST",
            bc,
            input("features", json!([1, 30]), "FP32", row.clone()),
            400,
            "unexpected input \"features\": model breast-cancer takes \"input\"",
        ),
        (
            "POST",
            bc,
            input("input", json!([1, 29]), "FP32", json!(short_row)),
            400,
            "has shape [1, 29] but the model expects [-1, 30]",
        ),
        (
            "POST",
            bc,
            input("input", json!([30]), "FP32", row.clone()),
            400,
            "has shape [30] but the model expects [-1, 30]",
        ),
        (
            "POST",
            bc,
            input("input", json!([1, 30]), "FP64", row.clone()),
            400,
            "datatype FP64 but the model expects FP32",
        ),
        (
            "POST",
            bc,
            input("input", json!([1, 30]), "INT64", json!(vec![1; 30])),
            400,
            "datatype INT64 but the model expects FP32",
        ),
        (
            "POST",
            bc,
            input("input", json!([1, 30]), "FP32", json!(short_row)),
            400,
            "shape [1, 30] needs 30 elements but `data` has 29",
        ),
        (
            "POST",
            bc,
            input("input", json!([2, 30]), "FP32", row.clone()),
            400,
            "shape [2, 30] needs 60 elements but `data` has 30",
        ),
        (
            "POST",
            bc,
            input("input", json!([1, 30]), "FP32", json!(too_big)),
            400,
            "element 3 is NaN or infinite",
        ),
        (
            "POST",
            bc,
            input("input", json!([1, 30]), "FP16", row.clone()),
            400,
            "datatype FP16 is not supported",
        ),
        (
            "POST",
            bc,
            input("input", json!([1, 30]), "FLOAT", row.clone()),
            400,
            "unknown datatype \"FLOAT\"",
        ),
        (
            "POST",
            bc,
            input("input", json!([-1, 30]), "FP32", row.clone()),
            400,
            "negative dimension",
        ),
        (
            "POST",
            bc,
            input("input", json!([0, 30]), "FP32", json!([])),
            400,
            "has no rows",
        ),
        (
            "POST",
            bc,
            input("input", json!([1, 30]), "FP32", json!(vec!["a"; 30])),
            400,
            "BYTES",
        ),
        (
            "POST",
            bc,
            input("input", json!([1, 30]), "FP32", serde_json::Value::Null),
            400,
            "has no `data`",
        ),
        (
            "POST",
            bc,
            json!({"inputs": example()["inputs"], "outputs": [{"name": "score"}]}).to_string(),
            400,
            "unknown output \"score\": model breast-cancer has \"label\", \"probabilities\"",
        ),
        (
            "POST",
            "/v2/models/gather/infer",
            input("index", json!([1, 1]), "INT64", json!([1.5])),
            400,
            "element 0 (1.5) is not a valid INT64",
        ),
        (
            "POST",
            "/v2/models/nope/infer",
            example().to_string(),
            404,
            "unknown model \"nope\"",
        ),
        (
            "POST",
            "/v2/models/breast-cancer/versions/9/infer",
            example().to_string(),
            404,
            "unknown version \"9\" of model \"breast-cancer\" (available: 1, 2, 3)",
        ),
        (
            "POST",
            "/v2/models/breast-cancer/versions/latest/infer",
            example().to_string(),
            404,
            "unknown version \"latest\"",
        ),
        (
            "GET",
            "/v2/models/nope",
            String::new(),
            404,
            "unknown model \"nope\"",
        ),
        (
            "GET",
            "/v2/models/nope/ready",
            String::new(),
            404,
            "unknown model",
        ),
        (
            "GET",
            "/v1/models/breast-cancer",
            String::new(),
            404,
            "no route for /v1/models/breast-cancer",
        ),
        (
            "GET",
            bc,
            String::new(),
            405,
            "method GET is not allowed on /v2/models/breast-cancer/infer; allowed: POST",
        ),
        ("POST", "/v2/health/live", String::new(), 405, "allowed: GET"),
        (
            "POST",
            bc,
            "x".repeat(SMALL_LIMIT + 1),
            413,
            "larger than the limit of 65536 bytes",
        ),
    ];
    for (method, path, body, status, message) in cases {
        let r = send(
            &c,
            method,
            &s.url(path),
            &[("content-type", "application/json")],
            body.clone(),
        )
        .await;
        assert_eq!(r.status, status, "{method} {path} {body:.80}: {:?}", r.body);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(r.header("x-request-id").is_some());
        let error = r.error();
        assert!(
            error.contains(message),
            "{method} {path}: {error:?} should contain {message:?}"
        );
        if status == 405 {
            assert_eq!(
                r.header("allow"),
                Some(if method == "GET" { "POST" } else { "GET" })
            );
        }
    }
}

/// Binary-extension mistakes: NaN in raw floats, sizes that do not add up.
#[tokio::test]
async fn bad_binary_requests() {
    let s = server().await;
    let c = client();
    let url = s.url("/v2/models/breast-cancer/versions/1/infer");
    let header = |size: usize| {
        json!({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "parameters": {"binary_data_size": size}}]}).to_string()
    };
    let with_floats = |h: &str, values: &[f32]| {
        let mut b = h.as_bytes().to_vec();
        for v in values {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    };
    let mut nan_row = [0.5f32; 30];
    nan_row[7] = f32::NAN;
    let h = header(120);
    let cases: Vec<(Vec<u8>, String, &str)> = vec![
        (
            with_floats(&h, &nan_row),
            h.len().to_string(),
            "element 7 is NaN or infinite",
        ),
        (
            with_floats(&h, &[0.5; 29]),
            h.len().to_string(),
            "needs 120 bytes of binary data but only 116 remain",
        ),
        (
            with_floats(&h, &[0.5; 31]),
            h.len().to_string(),
            "4 bytes of binary data follow the JSON header but no input claims them",
        ),
        (
            with_floats(&header(100), &[0.5; 25]),
            header(100).len().to_string(),
            "binary_data_size is 100 but shape [1, 30] of FP32 needs 120 bytes",
        ),
        (
            with_floats(&h, &[0.5; 30]),
            "99999".into(),
            "Inference-Header-Content-Length is 99999 but the body has only",
        ),
        (
            with_floats(&h, &[0.5; 30]),
            "abc".into(),
            "\"abc\" is not a byte count",
        ),
    ];
    for (body, len, message) in cases {
        let r = send(
            &c,
            "POST",
            &url,
            &[("inference-header-content-length", &len)],
            body,
        )
        .await;
        assert_eq!(r.status, 400, "{message}: {:?}", r.body);
        assert!(
            r.error().contains(message),
            "{:?} should contain {message:?}",
            r.error()
        );
    }
}

/// The binary on an address in use: it loads the models, says why it cannot listen and what
/// to do, exits 1, and its log is plain text when it goes to a pipe (no terminal colours in a
/// log file or a collector).
#[test]
fn the_binary_explains_an_address_in_use_in_plain_text() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_inference-server"))
        .arg("--models")
        .arg(models_dir())
        .arg("--listen")
        .arg(taken.local_addr().unwrap().to_string())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("INFO") && said.contains("loaded breast-cancer/1"),
        "{said}"
    );
    assert!(
        said.contains("the address is in use") && said.contains("--listen"),
        "{said}"
    );
    assert!(!said.contains('\x1b'), "escape codes in a piped log: {said:?}");
}

/// A models folder that is not there: the binary names the flag and the folder, and does not
/// speak of models that failed to load (none was tried).
#[test]
fn the_binary_names_a_missing_models_folder() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_inference-server"))
        .args(["--models", "/nonexistent/models", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("--models /nonexistent/models: cannot read model repository"),
        "{said}"
    );
    assert!(
        !said.contains("failed to load") && !said.contains("model *"),
        "{said}"
    );
}
