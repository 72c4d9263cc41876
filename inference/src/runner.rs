//! What runs one batch: the [`Runner`] trait a pool's workers call, and [`OrtRunner`], the
//! real one over an ONNX Runtime session (tests substitute runners that block or panic).

use ort::session::Session;
use ort::value::{TensorRef, ValueType};

use crate::tensor::{Tensor, TensorData};
use crate::with_tensor_data;

/// Runs one batch. [`OrtRunner`] is the real one; tests substitute runners that block or
/// panic to exercise the pool's overload and failure paths deterministically.
pub trait Runner: Send + 'static {
    /// `inputs` are in the model's input order; outputs must be in its output order.
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, String>;
}

/// Runs batches through an ONNX Runtime session, copying nothing on the way in.
pub struct OrtRunner {
    session: Session,
    input_names: Vec<String>,
    output_names: Vec<String>,
}

impl OrtRunner {
    pub fn new(session: Session) -> OrtRunner {
        let input_names = session.inputs().iter().map(|o| o.name().to_string()).collect();
        let output_names = session.outputs().iter().map(|o| o.name().to_string()).collect();
        OrtRunner {
            session,
            input_names,
            output_names,
        }
    }
}

impl Runner for OrtRunner {
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, String> {
        let mut values = Vec::with_capacity(inputs.len());
        for (name, tensor) in self.input_names.iter().zip(inputs) {
            let shape = tensor.shape();
            let value: ort::session::SessionInputValue<'_> = with_tensor_data!(tensor.data(), v => {
                TensorRef::from_array_view((shape, v.as_slice())).map_err(|e| e.to_string())?.into()
            });
            values.push((name.as_str(), value));
        }
        let outputs = self.session.run(values).map_err(|e| e.to_string())?;
        let mut result = Vec::with_capacity(self.output_names.len());
        for name in &self.output_names {
            let value = outputs
                .get(name.as_str())
                .ok_or_else(|| format!("ONNX Runtime returned no output {name:?}"))?;
            result.push(extract(name, value)?);
        }
        Ok(result)
    }
}

fn extract(name: &str, value: &ort::value::DynValue) -> Result<Tensor, String> {
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err(format!("output {name:?} is not a tensor"));
    };
    macro_rules! typed {
        ($t:ty, $var:ident) => {{
            let (shape, data) = value.try_extract_tensor::<$t>().map_err(|e| e.to_string())?;
            let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
            Tensor::new(shape, TensorData::$var(data.to_vec()))
        }};
    }
    use ort::value::TensorElementType as T;
    match ty {
        T::Bool => typed!(bool, Bool),
        T::Uint8 => typed!(u8, U8),
        T::Uint16 => typed!(u16, U16),
        T::Uint32 => typed!(u32, U32),
        T::Uint64 => typed!(u64, U64),
        T::Int8 => typed!(i8, I8),
        T::Int16 => typed!(i16, I16),
        T::Int32 => typed!(i32, I32),
        T::Int64 => typed!(i64, I64),
        T::Float32 => typed!(f32, F32),
        T::Float64 => typed!(f64, F64),
        other => Err(format!(
            "output {name:?} has element type {other}, which cannot be served"
        )),
    }
}
