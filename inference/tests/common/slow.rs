//! A model that takes 300 ms per request, for overload, timeout and deadline tests; shared
//! with the gateway's tests (`proxy/tests/common/backends.rs` includes this file).

use std::sync::Arc;

use inference::{ModelRepository, PoolConfig};

/// A repository with one model, "slow" (version 1): one worker that takes 300 ms per request,
/// a queue of two. For overload and deadline tests.
pub fn slow_repo() -> ModelRepository {
    use inference::{DataType, ModelMetadata, Pool, Runner, Tensor, TensorSpec};
    struct Slow;
    impl Runner for Slow {
        fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, String> {
            std::thread::sleep(std::time::Duration::from_millis(300));
            Ok(vec![inputs[0].clone()])
        }
    }
    let spec = TensorSpec {
        name: "x".into(),
        datatype: DataType::F32,
        shape: vec![-1, 1],
    };
    let meta = ModelMetadata {
        name: "slow".into(),
        version: "1".into(),
        platform: "test",
        inputs: vec![spec.clone()],
        outputs: vec![spec],
        batchable: true,
    };
    let config = PoolConfig {
        instances: 1,
        max_batch: 1,
        queue_capacity: 2,
        ..PoolConfig::default()
    };
    let mut repo = ModelRepository::default();
    repo.insert(
        "slow",
        1,
        Arc::new(Pool::with_runners(meta, config, vec![Box::new(Slow)])),
    );
    repo
}
