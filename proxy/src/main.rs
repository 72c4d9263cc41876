//! The gateway binary. Built in the gateway issue; until then `scripts/run.sh` serves the
//! models with `inference-server`.

fn main() {
    eprintln!("gateway: not built yet; run scripts/run.sh to serve the models with inference-server");
    std::process::exit(2);
}
