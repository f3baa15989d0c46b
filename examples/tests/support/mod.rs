//! What the process tests share: starting an `aegis-node` and reading what
//! it prints.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// An `aegis-node` process, killed (SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    /// The address it printed as `listening on ADDR`.
    pub address: String,
    /// The lines it printed after that.
    pub lines: mpsc::Receiver<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `aegis-node` with `args` and waits (20 s at most) until it
/// prints the address it listens on.
pub fn spawn<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_aegis-node"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let address = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("the node printed its address");
        if let Some(addr) = line.strip_prefix("listening on ") {
            break addr.to_owned();
        }
    };
    Proc {
        child,
        address,
        lines,
    }
}
