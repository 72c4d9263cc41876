//! `inference-server --grpc-listen`: the Open Inference Protocol over gRPC
//! (`inference.GRPCInferenceService`, and `grpc.health.v1.Health` for probes), over the same
//! repository, pools and batching as REST, with the same checks and messages
//! ([`crate::protocol::grpc`] maps errors to codes).
//!
//! Limits follow REST's ([`ServerOptions`]): messages over the body limit are refused
//! (RESOURCE_EXHAUSTED) before they are decoded, answers over the answer limit before they
//! are encoded; a `grpc-timeout` the client sets bounds the wait for the model
//! (DEADLINE_EXCEEDED, sent a tenth of the deadline early, at least 5 ms: tonic's own
//! timer, and the client's, would otherwise end the call first as CANCELLED).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use crate::error::InferError;
use crate::protocol::grpc::pb::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use crate::protocol::grpc::{self, pb};
use crate::protocol::request_id::request_id;
use crate::repository::ModelRepository;
use crate::server::ServerOptions;

/// The service over a repository.
pub struct GrpcServer {
    repo: Arc<ModelRepository>,
    options: ServerOptions,
}

/// The deadline a client set (`grpc-timeout`).
fn deadline<T>(request: &Request<T>) -> Option<Duration> {
    grpc::parse_timeout(request.metadata().get("grpc-timeout")?.to_str().ok()?)
}

/// tonic refuses a message over the decoding limit as OUT_OF_RANGE with its own words; gRPC's
/// own servers, and REST's 413, say RESOURCE_EXHAUSTED: the answer is given REST's code and
/// text.
fn too_large<B>(mut response: http::Response<B>, limit: usize) -> http::Response<B> {
    let headers = response.headers_mut();
    let tonic_limit = headers.get("grpc-status").is_some_and(|v| v == "11")
        && headers.get("grpc-message").is_some_and(|m| {
            m.as_bytes()
                .starts_with(b"Error,%20decoded%20message%20length%20too%20large")
        });
    if tonic_limit {
        let status = grpc::status(&InferError::PayloadTooLarge { limit });
        headers.remove("grpc-message");
        let _ = status.add_header(headers);
    }
    response
}

impl GrpcServer {
    pub fn new(repo: Arc<ModelRepository>, options: ServerOptions) -> GrpcServer {
        GrpcServer { repo, options }
    }

    fn pool(&self, name: &str, version: &str) -> Result<&Arc<crate::pool::Pool>, Status> {
        self.repo
            .get(name, grpc::version(version))
            .map_err(|e| grpc::status(&e))
    }

    /// Serves on `listener` until `shutdown` resolves, then lets calls in flight finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), String> {
        let (health, health_service) = tonic_health::server::health_reporter();
        if !self.repo.is_empty() {
            health
                .set_service_status("", tonic_health::ServingStatus::Serving)
                .await;
            health
                .set_service_status(grpc::SERVICE, tonic_health::ServingStatus::Serving)
                .await;
        }
        let limits = self.options.clone();
        let service = GrpcInferenceServiceServer::new(self)
            .max_decoding_message_size(limits.max_body_bytes)
            .max_encoding_message_size(limits.max_answer_bytes.saturating_add(1024));
        let limit = limits.max_body_bytes;
        // tonic sets TCP_NODELAY only on listeners it binds itself: without it, an answer's
        // trailers waited for the client's delayed ACK (40 ms per 64-row call, measured with
        // loadtests/bench_grpc.sh).
        let incoming = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            |stream| {
                stream.inspect(|s| {
                    let _ = s.set_nodelay(true);
                })
            },
        );
        tonic::transport::Server::builder()
            .layer(tower::util::MapResponseLayer::new(move |r| too_large(r, limit)))
            .max_concurrent_streams(100)
            .http2_keepalive_interval(Some(limits.idle_timeout))
            .add_service(health_service)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .map_err(|e| format!("the gRPC server failed: {e}"))
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for GrpcServer {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: !self.repo.is_empty(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = request.get_ref();
        self.pool(&r.name, &r.version)?;
        Ok(Response::new(pb::ModelReadyResponse { ready: true }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(grpc::server_metadata("inference-server")))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = request.get_ref();
        let pool = self.pool(&r.name, &r.version)?;
        let meta = pool.metadata();
        Ok(Response::new(grpc::model_metadata(
            meta,
            &meta.name,
            self.repo.versions(&r.name),
        )))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let rid = request_id(request.metadata().get("x-request-id").map(|v| v.as_bytes()));
        let wait = deadline(&request);
        let answer = async {
            let request = request.into_inner();
            let pool = self
                .repo
                .get(&request.model_name, grpc::version(&request.model_version))?
                .clone();
            let decoded = grpc::decode_request(request)?;
            let selected = crate::protocol::select_outputs(pool.metadata(), &decoded)?;
            let id = decoded.id.clone().unwrap_or_else(|| rid.clone());
            let outputs = match wait {
                Some(limit) => tokio::time::timeout(grpc::early(limit), pool.infer(decoded.inputs))
                    .await
                    .map_err(|_| InferError::Deadline {
                        limit_ms: limit.as_millis() as u64,
                    })??,
                None => pool.infer(decoded.inputs).await?,
            };
            let meta = pool.metadata();
            grpc::encode_response(
                meta,
                &meta.name,
                &meta.version,
                &id,
                &selected,
                &outputs,
                self.options.max_answer_bytes,
            )
        };
        let mut response = answer.await.map(Response::new).map_err(|e| {
            let mut status = grpc::status(&e);
            if let Ok(v) = request_id_value(&rid) {
                status.metadata_mut().insert("x-request-id", v);
            }
            status
        })?;
        if let Ok(v) = request_id_value(&rid) {
            response.metadata_mut().insert("x-request-id", v);
        }
        Ok(response)
    }
}

/// The `x-request-id` metadata value, marked so that HPACK never indexes it: an id is new in
/// every answer, and indexed it would push the fields that do repeat out of the 4 KiB table,
/// and have the encoder compare it with every earlier id first (memcmp under perf, several
/// µs per call at 2,000 calls/s).
fn request_id_value(rid: &str) -> Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>, ()> {
    let mut v: tonic::metadata::MetadataValue<tonic::metadata::Ascii> = rid.parse().map_err(drop)?;
    v.set_sensitive(true);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        let with = |v: &str| {
            let mut r = Request::new(());
            r.metadata_mut().insert("grpc-timeout", v.parse().unwrap());
            deadline(&r)
        };
        assert_eq!(with("2S"), Some(Duration::from_secs(2)));
        assert_eq!(with("150m"), Some(Duration::from_millis(150)));
        assert_eq!(with("7u"), Some(Duration::from_micros(7)));
        assert_eq!(with("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(with("x"), None);
        assert_eq!(with("5Q"), None);
        assert_eq!(deadline(&Request::new(())), None);
    }

    #[test]
    fn request_ids_are_sent_unindexed() {
        let v = request_id_value("0123456789abcdef").unwrap();
        assert!(v.is_sensitive());
        assert_eq!(v.to_str().unwrap(), "0123456789abcdef");
        assert!(request_id_value("not\nascii").is_err());
    }
}
