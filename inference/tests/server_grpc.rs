//! `inference-server --grpc-listen`, over real sockets with a tonic client: every method of
//! `inference.GRPCInferenceService`, the health service, every error with its code and the
//! same text REST answers, and answers equal to REST's and to Python onnxruntime's.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use inference::PoolConfig;
use inference::grpc::GrpcServer;
use inference::protocol::grpc::pb;
use inference::protocol::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use inference::server::ServerOptions;
use serde_json::json;
use tonic::Code;
use tonic::transport::Channel;

type Client = GrpcInferenceServiceClient<Channel>;

/// A gRPC server on an ephemeral port over `repo`; stops when the returned sender drops.
async fn start(
    repo: Arc<inference::ModelRepository>,
    options: ServerOptions,
) -> (Client, (tokio::sync::oneshot::Sender<()>, Channel)) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(GrpcServer::new(repo, options).serve(listener, async move {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (GrpcInferenceServiceClient::new(channel.clone()), (stop, channel))
}

fn bundled() -> Arc<inference::ModelRepository> {
    let mut repo = load(models_dir(), PoolConfig::default());
    let fixtures = load(fixtures_dir(), PoolConfig::default());
    for (name, version, pool) in fixtures.iter() {
        repo.insert(name, version, pool.clone());
    }
    Arc::new(repo)
}

fn options() -> ServerOptions {
    ServerOptions {
        max_body_bytes: SMALL_LIMIT,
        ..ServerOptions::default()
    }
}

fn fp32_input(name: &str, rows: &[Vec<f64>]) -> pb::model_infer_request::InferInputTensor {
    pb::model_infer_request::InferInputTensor {
        name: name.into(),
        datatype: "FP32".into(),
        shape: vec![rows.len() as i64, rows[0].len() as i64],
        parameters: Default::default(),
        contents: Some(pb::InferTensorContents {
            fp32_contents: rows.iter().flatten().map(|&v| v as f32).collect(),
            ..Default::default()
        }),
    }
}

fn raw_request(model: &str, version: &str, rows: &[Vec<f64>]) -> pb::ModelInferRequest {
    let mut input = fp32_input("input", rows);
    let raw: Vec<u8> = input
        .contents
        .take()
        .unwrap()
        .fp32_contents
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    pb::ModelInferRequest {
        model_name: model.into(),
        model_version: version.into(),
        inputs: vec![input],
        raw_input_contents: vec![raw],
        ..Default::default()
    }
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn i64s(bytes: &[u8]) -> Vec<i64> {
    bytes
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[tokio::test]
async fn health_and_metadata() {
    let (mut c, _stop) = start(bundled(), options()).await;
    assert!(
        c.server_live(pb::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        c.server_ready(pb::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let server = c
        .server_metadata(pb::ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(server.name, "inference-server");
    assert!(server.extensions.contains(&"binary_tensor_data".to_string()));
    let model = c
        .model_metadata(pb::ModelMetadataRequest {
            name: "breast-cancer".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(model.name, "breast-cancer");
    assert_eq!(model.versions, ["1", "2", "3"]);
    assert_eq!(model.platform, "onnxruntime_onnx");
    assert_eq!(model.inputs[0].name, "input");
    assert_eq!(model.inputs[0].datatype, "FP32");
    assert_eq!(model.inputs[0].shape, [-1, 30]);
    assert_eq!(model.outputs[1].shape, [-1, 2]);
    let ready = c
        .model_ready(pb::ModelReadyRequest {
            name: "breast-cancer".into(),
            version: "2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ready.ready);

    // The standard health service, as Kubernetes' gRPC probes and grpc_health_probe ask it.
    let mut health = tonic_health::pb::health_client::HealthClient::new(_stop.1.clone());
    for service in ["", "inference.GRPCInferenceService"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }
}

/// The same rows over gRPC (raw and typed contents) and over REST: equal answers, equal to
/// Python onnxruntime's within 1e-5.
#[tokio::test]
async fn infer_matches_rest_and_python_onnxruntime() {
    let repo = bundled();
    let (mut c, _stop) = start(repo.clone(), options()).await;
    let rest = TestServer::start(
        Arc::try_unwrap(bundled()).unwrap_or_else(|_| unreachable!()),
        options(),
    )
    .await;
    let http = client();
    for (model, version) in [("breast-cancer", 1), ("breast-cancer", 3), ("digits", 1)] {
        let v = vectors(model, version);
        let rows = vector_rows(&v);
        let rows = &rows[..rows.len().min(64)];
        let want: Vec<f64> = v["expected"]["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .take(rows.len())
            .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
            .collect();

        let mut request = tonic::Request::new(raw_request(model, &version.to_string(), rows));
        request
            .metadata_mut()
            .insert("x-request-id", "trace-9".parse().unwrap());
        let answer = c.model_infer(request).await.unwrap();
        assert_eq!(answer.metadata().get("x-request-id").unwrap(), "trace-9");
        let answer = answer.into_inner();
        assert_eq!(answer.model_name, model);
        assert_eq!(answer.model_version, version.to_string());
        assert_eq!(answer.id, "trace-9", "no id in the request: the request id");
        assert_eq!(answer.outputs[0].name, "label");
        assert_eq!(answer.outputs[0].datatype, "INT64");
        assert_eq!(
            answer.outputs[1].shape,
            [rows.len() as i64, want.len() as i64 / rows.len() as i64]
        );
        let labels = i64s(&answer.raw_output_contents[0]);
        let probabilities = f32s(&answer.raw_output_contents[1]);
        for (got, want) in probabilities.iter().zip(&want) {
            assert!(
                (f64::from(*got) - want).abs() <= 1e-5,
                "{model}/{version}: {got} vs {want}"
            );
        }
        assert_eq!(probabilities.len(), want.len());

        // REST, same rows: the same numbers.
        let url = rest.url(&format!("/v2/models/{model}/versions/{version}/infer"));
        let r = post_json(&http, &url, &infer_body(rows)).await.json();
        let rest_labels: Vec<i64> = serde_json::from_value(r["outputs"][0]["data"].clone()).unwrap();
        let rest_probabilities: Vec<f32> = serde_json::from_value(r["outputs"][1]["data"].clone()).unwrap();
        assert_eq!(labels, rest_labels);
        assert_eq!(probabilities, rest_probabilities);

        // Typed contents in, typed contents out (one output asked for, `binary_data: false`).
        let mut typed = pb::ModelInferRequest {
            model_name: model.into(),
            model_version: version.to_string(),
            id: "mine".into(),
            inputs: vec![fp32_input("input", rows)],
            ..Default::default()
        };
        typed
            .outputs
            .push(pb::model_infer_request::InferRequestedOutputTensor {
                name: "probabilities".into(),
                parameters: [(
                    "binary_data".to_string(),
                    pb::InferParameter {
                        parameter_choice: Some(pb::infer_parameter::ParameterChoice::BoolParam(false)),
                    },
                )]
                .into(),
            });
        let answer = c.model_infer(typed).await.unwrap().into_inner();
        assert_eq!(answer.id, "mine");
        assert!(answer.raw_output_contents.is_empty());
        assert_eq!(answer.outputs.len(), 1);
        assert_eq!(
            answer.outputs[0].contents.as_ref().unwrap().fp32_contents,
            probabilities
        );
    }

    // Other datatypes and two inputs, typed: INT32 and FP64 (the fixtures' `types` model).
    let request = pb::ModelInferRequest {
        model_name: "types".into(),
        inputs: vec![
            pb::model_infer_request::InferInputTensor {
                name: "b".into(),
                datatype: "INT32".into(),
                shape: vec![2, 2],
                parameters: Default::default(),
                contents: Some(pb::InferTensorContents {
                    int_contents: vec![1, 2, 3, -4],
                    ..Default::default()
                }),
            },
            pb::model_infer_request::InferInputTensor {
                name: "a".into(),
                datatype: "FP64".into(),
                shape: vec![2, 2],
                parameters: Default::default(),
                contents: Some(pb::InferTensorContents {
                    fp64_contents: vec![0.5, 1.25, -2.0, 1e300],
                    ..Default::default()
                }),
            },
        ],
        parameters: [(
            "binary_data_output".to_string(),
            pb::InferParameter {
                parameter_choice: Some(pb::infer_parameter::ParameterChoice::BoolParam(false)),
            },
        )]
        .into(),
        ..Default::default()
    };
    let answer = c.model_infer(request).await.unwrap().into_inner();
    assert_eq!(
        answer.outputs[0].contents.as_ref().unwrap().fp64_contents,
        [1.0, 2.5, -4.0, 2e300]
    );
    assert_eq!(
        answer.outputs[1].contents.as_ref().unwrap().int_contents,
        [2, 3, 4, -3]
    );
    rest.stop().await;
}

/// Each mistake gets its gRPC code, with exactly the text REST answers for the same mistake.
#[tokio::test]
async fn every_error_gets_its_code_and_the_rest_text() {
    let (mut c, _stop) = start(bundled(), options()).await;
    let rest = server().await;
    let http = client();
    let rows = vector_rows(&vectors("breast-cancer", 1));

    async fn grpc_error(c: &mut Client, r: pb::ModelInferRequest) -> tonic::Status {
        c.model_infer(r).await.unwrap_err()
    }
    // Unknown model, unknown version.
    let s = grpc_error(&mut c, raw_request("nope", "", &rows[..1])).await;
    assert_eq!(s.code(), Code::NotFound);
    let r = post_json(&http, &rest.url("/v2/models/nope/infer"), &infer_body(&rows[..1])).await;
    assert_eq!((r.status, s.message()), (404, r.error().as_str()));
    let s = grpc_error(&mut c, raw_request("breast-cancer", "9", &rows[..1])).await;
    assert_eq!(s.code(), Code::NotFound);
    let r = post_json(
        &http,
        &rest.url("/v2/models/breast-cancer/versions/9/infer"),
        &infer_body(&rows[..1]),
    )
    .await;
    assert_eq!(s.message(), r.error());
    let s = c
        .model_metadata(pb::ModelMetadataRequest {
            name: "nope".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
    let s = c
        .model_ready(pb::ModelReadyRequest {
            name: "breast-cancer".into(),
            version: "9".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound);

    // A shape the model does not take: 29 features.
    let short: Vec<Vec<f64>> = vec![rows[0][..29].to_vec()];
    let s = grpc_error(&mut c, raw_request("breast-cancer", "1", &short)).await;
    assert_eq!(s.code(), Code::InvalidArgument);
    let r = post_json(
        &http,
        &rest.url("/v2/models/breast-cancer/versions/1/infer"),
        &infer_body(&short),
    )
    .await;
    assert_eq!((r.status, s.message()), (400, r.error().as_str()));
    // An unknown output asked for.
    let mut unknown_output = raw_request("breast-cancer", "1", &rows[..1]);
    unknown_output
        .outputs
        .push(pb::model_infer_request::InferRequestedOutputTensor {
            name: "nope".into(),
            parameters: Default::default(),
        });
    let s = grpc_error(&mut c, unknown_output).await;
    assert_eq!(s.code(), Code::InvalidArgument);
    let mut body = infer_body(&rows[..1]);
    body["outputs"] = json!([{"name": "nope"}]);
    let r = post_json(
        &http,
        &rest.url("/v2/models/breast-cancer/versions/1/infer"),
        &body,
    )
    .await;
    assert_eq!(s.message(), r.error());
    // A non-finite value.
    let mut nan = rows[..1].to_vec();
    nan[0][3] = f64::NAN;
    let s = grpc_error(&mut c, raw_request("breast-cancer", "1", &nan)).await;
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("NaN or infinite"), "{}", s.message());

    // Over the body limit (64 KiB here): refused before it is decoded.
    let many: Vec<Vec<f64>> = rows.iter().cycle().take(1000).cloned().collect();
    let s = grpc_error(&mut c, raw_request("breast-cancer", "1", &many)).await;
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert_eq!(
        s.message(),
        format!("request body is larger than the limit of {SMALL_LIMIT} bytes")
    );
    // An answer over the answer limit: refused before it is encoded.
    let small = ServerOptions {
        max_answer_bytes: 256,
        ..ServerOptions::default()
    };
    let (mut tight, _stop2) = start(bundled(), small).await;
    let s = grpc_error(&mut tight, raw_request("breast-cancer", "1", &rows[..20])).await;
    assert_eq!(s.code(), Code::ResourceExhausted);
    assert!(
        s.message().contains("the answer would be larger"),
        "{}",
        s.message()
    );

    // Triton's extra methods answer UNIMPLEMENTED.
    let mut grpc = tonic::client::Grpc::new(_stop.1.clone());
    grpc.ready().await.unwrap();
    let unimplemented = grpc
        .unary::<_, pb::ServerLiveResponse, _>(
            tonic::Request::new(pb::ModelReadyRequest {
                name: "breast-cancer".into(),
                version: String::new(),
            }),
            "/inference.GRPCInferenceService/ModelConfig".parse().unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(unimplemented.code(), Code::Unimplemented);
}

/// A slow model: a full queue is UNAVAILABLE with `retry-after`, a client's deadline is
/// DEADLINE_EXCEEDED; both with REST's text.
#[tokio::test]
async fn overload_and_deadlines() {
    let repo = slow_repo();
    let (c, _stop) = start(Arc::new(repo), ServerOptions::default()).await;
    let request = || {
        let mut r = raw_request("slow", "", &[vec![1.0]]);
        r.inputs[0].name = "x".into();
        r
    };
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let mut c = c.clone();
            let r = request();
            tokio::spawn(async move { c.model_infer(r).await })
        })
        .collect();
    let (mut ok, mut shed) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                assert_eq!(s.metadata().get("retry-after").unwrap(), "1");
                assert_eq!(
                    s.message(),
                    "model slow/1 is overloaded (queue of 2 requests is full); retry later"
                );
                shed += 1;
            }
        }
    }
    assert!(
        ok >= 2 && shed >= 1 && ok + shed == 8,
        "{ok} answered, {shed} shed"
    );

    let mut late = tonic::Request::new(request());
    late.set_timeout(Duration::from_millis(200));
    let s = c.clone().model_infer(late).await.unwrap_err();
    assert_eq!(s.code(), Code::DeadlineExceeded, "{s:?}");
}
