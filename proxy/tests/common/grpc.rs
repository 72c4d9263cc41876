//! A tonic client for the gateway's gRPC side, and the messages the tests send.

use std::sync::Arc;

use inference::protocol::grpc::pb;
use inference::protocol::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

use super::Gateway;

pub type Client = GrpcInferenceServiceClient<Channel>;

/// A tonic channel to the gateway over TLS with ALPN h2 (the test CA trusted).
pub async fn channel(g: &Gateway) -> Channel {
    let mut config = (*g.tls).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let config = Arc::new(config);
    let addr = g.https;
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let config = config.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp)
                    .await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .unwrap()
}

pub fn with_meta<T>(message: T, meta: &[(&'static str, &str)]) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    for (k, v) in meta {
        r.metadata_mut().insert(*k, v.parse().unwrap());
    }
    r
}

pub fn row_request(model: &str, row: &[f32]) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: model.into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![1, row.len() as i64],
            parameters: Default::default(),
            contents: None,
        }],
        raw_input_contents: vec![row.iter().flat_map(|v| v.to_le_bytes()).collect()],
        ..Default::default()
    }
}

pub fn probabilities(answer: &pb::ModelInferResponse) -> Vec<f32> {
    answer.raw_output_contents[1]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}
