//! Stacking several requests into one batch along the first dimension, and splitting the
//! batch's outputs back, request by request. Pure functions: the pool decides what to stack.

use crate::tensor::{Tensor, TensorData};

/// Whether two requests' inputs can share a batch: same element types and the same shape
/// after the first (batch) dimension, input by input.
pub fn compatible(a: &[Tensor], b: &[Tensor]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.dtype() == y.dtype() && x.shape().get(1..) == y.shape().get(1..))
}

/// Concatenates the requests' inputs along dimension 0, input by input.
/// Callers guarantee [`compatible`] inputs; a mismatch is reported, not stacked wrongly.
pub fn stack(requests: &[&[Tensor]]) -> Result<Vec<Tensor>, String> {
    let Some(first) = requests.first() else {
        return Ok(Vec::new());
    };
    let mut stacked = Vec::with_capacity(first.len());
    for input in 0..first.len() {
        let template = &first[input];
        let rows: usize = requests.iter().map(|r| r[input].shape()[0]).sum();
        let mut data = TensorData::with_capacity(template.dtype(), rows.saturating_mul(template.row_len()));
        for request in requests {
            let tensor = &request[input];
            if tensor.shape().get(1..) != template.shape().get(1..) || !data.extend_from(tensor.data()) {
                return Err(format!("input {input}: requests in one batch do not stack"));
            }
        }
        let mut shape = template.shape().to_vec();
        shape[0] = rows;
        stacked.push(Tensor::new(shape, data)?);
    }
    Ok(stacked)
}

/// Splits batch outputs back into one output list per request, `rows[i]` rows for request i.
/// Every output must have exactly `sum(rows)` rows, or the model broke the batch contract.
pub fn split(outputs: Vec<Tensor>, rows: &[usize]) -> Result<Vec<Vec<Tensor>>, String> {
    let total: usize = rows.iter().sum();
    let mut per_request: Vec<Vec<Tensor>> = (0..rows.len())
        .map(|_| Vec::with_capacity(outputs.len()))
        .collect();
    for (index, output) in outputs.into_iter().enumerate() {
        if output.shape().first() != Some(&total) {
            return Err(format!(
                "output {index} has shape {:?}, which does not have {total} rows for a batch of {total} rows",
                output.shape()
            ));
        }
        if rows.len() == 1 {
            per_request[0].push(output);
            continue;
        }
        let row_len = output.row_len();
        let mut start = 0;
        for (request, &r) in rows.iter().enumerate() {
            let mut shape = output.shape().to_vec();
            shape[0] = r;
            let end = start + r * row_len;
            per_request[request].push(Tensor::new(shape, output.data().slice(start, end))?);
            start = end;
        }
    }
    Ok(per_request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        Tensor::new(shape, TensorData::F32(data)).unwrap()
    }

    #[test]
    fn stack_then_split_is_identity_for_mixed_row_counts() {
        let a = vec![t(vec![1, 2], vec![1.0, 2.0])];
        let b = vec![t(vec![3, 2], vec![3.0, 4.0, 5.0, 6.0, 7.0, 8.0])];
        let c = vec![t(vec![2, 2], vec![9.0, 10.0, 11.0, 12.0])];
        let stacked = stack(&[&a, &b, &c]).unwrap();
        assert_eq!(stacked[0].shape(), &[6, 2]);
        let back = split(stacked, &[1, 3, 2]).unwrap();
        assert_eq!(back, vec![a, b, c]);
    }

    #[test]
    fn split_rejects_wrong_row_count() {
        let err = split(vec![t(vec![2], vec![0.0, 1.0])], &[1, 2]).unwrap_err();
        assert!(err.contains("does not have 3 rows"), "{err}");
    }

    #[test]
    fn incompatible_trailing_shapes_do_not_stack() {
        let a = vec![t(vec![1, 2], vec![1.0, 2.0])];
        let b = vec![t(vec![1, 3], vec![1.0, 2.0, 3.0])];
        assert!(!compatible(&a, &b));
        assert!(stack(&[&a, &b]).is_err());
        let c = vec![Tensor::new(vec![1, 2], TensorData::F64(vec![1.0, 2.0])).unwrap()];
        assert!(!compatible(&a, &c));
    }
}
