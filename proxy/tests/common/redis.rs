//! A `redis-server` of the test's own (shared rate limits, the shared feedback store).

use std::process::{Child, Command, Stdio};

use super::{free_port, wait_for};

/// A `redis-server` of the test's own, without persistence.
pub struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Redis {
        let mut r = Redis {
            port: free_port(),
            child: None,
        };
        r.restart();
        r
    }

    pub fn restart(&mut self) {
        let found = Command::new("redis-server").arg("--version").output().is_ok();
        assert!(
            found,
            "redis-server is missing: scripts/setup.sh installs it (Debian package redis-server)"
        );
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        wait_for(format!("127.0.0.1:{}", self.port).parse().unwrap());
    }

    /// Stops it hard, as a crash or a lost node would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Keys under a prefix, read with redis-cli.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let out = Command::new("redis-cli")
            .args([
                "-p",
                &self.port.to_string(),
                "--scan",
                "--pattern",
                &format!("{prefix}:*"),
            ])
            .output()
            .expect("redis-cli (Debian package redis-tools, installed with redis-server)");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
