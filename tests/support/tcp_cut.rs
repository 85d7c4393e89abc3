#![allow(dead_code)] // each test binary uses a different part of the harness
//! A plain TCP relay on loopback in front of the apiserver, for one operator replica: the test
//! [cuts](TcpCut::cut) it to partition that replica from the apiserver (open connections are
//! closed, new ones refused), as a node losing its network would; or [stalls](TcpCut::stall)
//! the connections open at that moment (they stay open, nothing more passes either way, as
//! with a half-open connection to an apiserver whose node lost power) while new connections
//! go through. TLS passes through untouched
//! (the apiserver's certificate is valid for 127.0.0.1 on any port).

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
};

use tokio::{net::TcpStream, sync::watch};

pub struct TcpCut {
    port: u16,
    cut: watch::Sender<bool>,
    /// Bumped by each [`TcpCut::stall`]; a connection accepted before stalls at the bump.
    stalls: watch::Sender<u64>,
    cut_flag: Arc<AtomicBool>,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl TcpCut {
    /// A relay to the server of `kubeconfig`, and a copy of that kubeconfig pointing at it.
    pub fn start(kubeconfig: &Path) -> Self {
        let text = std::fs::read_to_string(kubeconfig).expect("kubeconfig");
        let upstream = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: https://"))
            .expect("a server line")
            .trim()
            .to_owned();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("relay port");
        listener.set_nonblocking(true).expect("non-blocking");
        let port = listener.local_addr().expect("relay address").port();
        let (cut, cut_rx) = watch::channel(false);
        let (stalls, stalls_rx) = watch::channel(0u64);
        let cut_flag = Arc::new(AtomicBool::new(false));
        let flag = cut_flag.clone();
        let target = upstream.clone();
        thread::Builder::new()
            .name(format!("tcp-cut-{port}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("relay runtime");
                runtime.block_on(relay(listener, target, cut_rx, stalls_rx, flag));
            })
            .expect("relay thread");
        let dir = tempfile::tempdir().expect("temp dir");
        let copy = dir.path().join("kubeconfig");
        let rewritten = text.replace(
            &format!("server: https://{upstream}"),
            &format!("server: https://127.0.0.1:{port}"),
        );
        std::fs::write(&copy, rewritten).expect("kubeconfig copy");
        Self {
            port,
            cut,
            stalls,
            cut_flag,
            kubeconfig: copy,
            _dir: dir,
        }
    }

    /// The kubeconfig that reaches the apiserver through this relay.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Freezes every connection open now: no byte passes on them any more, neither is closed.
    /// Connections made afterwards are relayed as usual.
    pub fn stall(&self) {
        self.stalls.send_modify(|generation| *generation += 1);
    }

    /// Closes every relayed connection and refuses new ones.
    pub fn cut(&self) {
        self.cut_flag.store(true, Ordering::SeqCst);
        self.cut.send_replace(true);
    }

    /// Lets new connections through again after a [cut](TcpCut::cut).
    pub fn restore(&self) {
        self.cut_flag.store(false, Ordering::SeqCst);
        self.cut.send_replace(false);
    }
}

async fn relay(
    listener: std::net::TcpListener,
    upstream: String,
    cut: watch::Receiver<bool>,
    stalls: watch::Receiver<u64>,
    cut_flag: Arc<AtomicBool>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if cut_flag.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let upstream = upstream.clone();
        let mut cut = cut.clone();
        let mut stalls = stalls.clone();
        let born = *stalls.borrow_and_update();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(&upstream).await else {
                return;
            };
            let (mut client, mut server) = (client, server);
            let stalled = tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
                _ = cut.wait_for(|cut| *cut) => false,
                _ = stalls.wait_for(|generation| *generation > born) => true,
            };
            if stalled {
                // Both ends stay open and silent until the relay is cut.
                let _ = cut.wait_for(|cut| *cut).await;
            }
            drop((client, server));
        });
    }
}
